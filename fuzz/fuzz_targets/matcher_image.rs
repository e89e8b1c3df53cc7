//! Linked binaries from anywhere (what run-pre matching reads from a process's mapped files):
//! `Image::parse` must return an image or a typed error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = hotsplice_matcher::Image::parse(data);
});
