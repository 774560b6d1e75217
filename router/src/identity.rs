//! The peer name is stable across restarts (persisted under --data-dir);
//! the UID is fresh for every incarnation, so peers can tell a restart
//! from a stale record.

use anyhow::{Context, Result};
use std::path::Path;
use weft_proto::PeerName;

pub(crate) const NAME_FILE: &str = "peer-name";

pub fn load_or_create_name(data_dir: &Path, wanted: Option<PeerName>) -> Result<PeerName> {
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let path = data_dir.join(NAME_FILE);
    if let Some(name) = wanted {
        write_atomic(&path, name.to_string().as_bytes())?;
        return Ok(name);
    }
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            text.trim().parse().with_context(|| format!("{} is corrupt; delete it to get a new name", path.display()))
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let name = PeerName::from_random(rand::random());
            write_atomic(&path, name.to_string().as_bytes())?;
            Ok(name)
        }
        Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
    }
}

pub fn new_uid() -> u64 {
    // Zero is never used so that "no uid" can't be confused with a real one.
    rand::random::<u64>() | 1
}

/// What the router keeps in its data dir is written whole or not at all.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    crate::atomic_file::replace(path, data, 0o644)
}
