//! Replacing a file so that a crash leaves either the old or the new
//! content, never a mix, and a completed replace survives power loss.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The temp file a replace of `path` writes first: in the same directory,
/// hidden, and with a name no CNI runtime loads (not `*.conf`,
/// `*.conflist` or `*.json`).
pub fn temp_path(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?;
    Some(path.with_file_name(format!(".{}.weft-tmp", name.to_string_lossy())))
}

/// Replaces `path` with `data` atomically and durably: the temp file,
/// fsynced, renamed over `path`, then the directory fsynced.
pub fn replace(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().with_context(|| format!("{} has no parent directory", path.display()))?;
    let tmp = temp_path(path).with_context(|| format!("{} has no file name", path.display()))?;
    // A leftover of an interrupted run (never followed if it is a symlink).
    match std::fs::remove_file(&tmp) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            return Err(err).with_context(|| format!("removing the leftover {}", tmp.display()))
        }
        _ => {}
    }
    let written = (|| -> Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        file.write_all(data).with_context(|| format!("writing {}", tmp.display()))?;
        // The umask may have narrowed `mode`.
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", tmp.display()))?;
        file.sync_all().with_context(|| format!("syncing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing the directory {}", dir.display()))?;
    Ok(())
}
