//! `rotor keygen`: writes a new key-encryption key file.

use std::path::Path;

use rotor_envelope::{Kek, KeyFileKek};

pub fn run(out: &Path, force: bool) -> anyhow::Result<()> {
    let kek = KeyFileKek::generate(out, force)?;
    println!(
        "wrote key {} to {} (mode 0600)",
        kek.key_id(),
        out.display()
    );
    Ok(())
}
