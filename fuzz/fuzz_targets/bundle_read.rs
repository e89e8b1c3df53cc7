//! Bundle files from anywhere: `read` must return a bundle or a typed error, never panic; a
//! bundle it accepts must survive a write and a second read unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(sealed) = hotsplice_bundle::read(data) {
        let bytes = hotsplice_bundle::write(&sealed.bundle).expect("a bundle read is writable");
        let again = hotsplice_bundle::read(&bytes).expect("a bundle written is readable");
        assert_eq!(again.bundle, sealed.bundle);
    }
});
