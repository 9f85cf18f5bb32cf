//! App spec TOML → validated AppSpec. A spec that validates must hold the invariants the
//! agent relies on and must round-trip: written back as TOML and parsed again, it is the
//! same spec. Anything else must be refused with an error, never a panic.
#![no_main]

use fleet_fuzz::{check_spec_invariants, spec_to_toml};
use fleet_proto::spec::AppSpec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(spec) = AppSpec::parse(text) else {
        return;
    };
    check_spec_invariants(&spec);
    let again = spec_to_toml(&spec);
    let reparsed =
        AppSpec::parse(&again).unwrap_or_else(|e| panic!("re-written spec refused: {e}\n{again}"));
    assert_eq!(reparsed, spec, "spec does not round-trip:\n{again}");
});
