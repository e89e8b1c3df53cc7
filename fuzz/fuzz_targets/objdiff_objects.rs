//! Object files from anywhere, as either side of a diff: `patch_objects` must return a report
//! or a typed error, never panic. The other side is the input itself (the no-change path:
//! correlation, comparison of every symbol), nothing, or a real gcc object (`seeds/`).
#![no_main]

use libfuzzer_sys::fuzz_target;

const REFERENCE: &[u8] = include_bytes!("../seeds/work.o");

fuzz_target!(|data: &[u8]| {
    let _ = hotsplice_objdiff::patch_objects("fuzz.o", Some(data), Some(data));
    let _ = hotsplice_objdiff::patch_objects("fuzz.o", Some(REFERENCE), Some(data));
    let _ = hotsplice_objdiff::patch_objects("fuzz.o", Some(data), Some(REFERENCE));
    let _ = hotsplice_objdiff::patch_objects("fuzz.o", Some(data), None);
});
