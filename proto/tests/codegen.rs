//! The generated code under `src/gen/` is checked in so that building fleet needs no
//! protoc. This test regenerates it from `proto/fleet/v1/fleet.proto` with a vendored
//! protoc and fails on any difference. Run with `FLEET_REGEN=1` to rewrite the file.

use std::path::Path;

#[test]
fn generated_code_matches_proto() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tempfile::tempdir().unwrap();
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("vendored protoc");
    // SAFETY of set_var: this test binary has a single test and sets it before any thread reads it.
    unsafe { std::env::set_var("PROTOC", protoc) };
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .codec_path("crate::codec::FleetCodec")
        // Ordered maps: a message encodes to the same bytes every time (HashMap order
        // varies per map, which the proto_decode fuzz target catches).
        .btree_map(".")
        .out_dir(out.path())
        .compile_protos(
            &[root.join("proto/fleet/v1/fleet.proto")],
            &[root.join("proto")],
        )
        .expect("protoc failed on fleet.proto");

    let fresh = std::fs::read_to_string(out.path().join("fleet.v1.rs")).unwrap();
    let checked_in_path = root.join("src/gen/fleet.v1.rs");
    if std::env::var_os("FLEET_REGEN").is_some() {
        std::fs::write(&checked_in_path, &fresh).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(&checked_in_path).unwrap_or_default();
    assert!(
        checked_in == fresh,
        "src/gen/fleet.v1.rs is stale: run `FLEET_REGEN=1 cargo test -p fleet-proto --test codegen` and commit the result"
    );
}
