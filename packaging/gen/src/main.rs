//! `fleet-pkg-gen OUT_DIR`: the man pages and completions for the packages (see lib.rs).
#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::{bail, Result};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [out] = args.as_slice() else {
        bail!("usage: fleet-pkg-gen OUT_DIR (writes OUT_DIR/man and OUT_DIR/completions)");
    };
    let out = PathBuf::from(out);
    fleet_pkg_gen::generate(&out)?;
    eprintln!(
        "fleet-pkg-gen: man pages and completions in {}",
        out.display()
    );
    Ok(())
}
