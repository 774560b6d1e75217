//! Fault switches, shared by the accept loop, every request and every open
//! watch through a `tokio::sync::watch` channel, so a change wakes them all.

use std::time::Duration;

/// How often open watches get a BOOKMARK by default (the real apiserver
/// sends one about every minute).
pub const DEFAULT_BOOKMARK_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct Faults {
    /// No listener; open connections closed.
    pub down: bool,
    /// Requests are read and then not answered until this clears.
    pub hang: bool,
    /// Every request answered with this HTTP status and a `Status` body.
    pub fail: Option<u16>,
    /// Open watches send nothing (no events, bookmarks or end); new watch
    /// requests get no response head.
    pub black_hole: bool,
    /// Bumped to cut every open watch (connection aborted mid-body).
    pub drop_epoch: u64,
    /// Bumped to end every open watch with an in-stream 410 Expired.
    pub expire_epoch: u64,
    /// This many next watch requests get an HTTP-level 410.
    pub http_410_watches: u32,
    pub bookmark_interval: Duration,
}

impl Default for Faults {
    fn default() -> Faults {
        Faults {
            down: false,
            hang: false,
            fail: None,
            black_hole: false,
            drop_epoch: 0,
            expire_epoch: 0,
            http_410_watches: 0,
            bookmark_interval: DEFAULT_BOOKMARK_INTERVAL,
        }
    }
}
