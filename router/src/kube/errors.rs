//! API errors as one short line for logs and `weft status`.

use std::error::Error;

/// The error and its causes, without kube-rs's debug dumps, e.g.
/// `listing nodes: error trying to connect: tcp connect error: Connection
/// refused (os error 111)` or `403 Forbidden: nodes is forbidden: …`.
pub(super) fn describe(err: &(dyn Error + 'static)) -> String {
    use kube::runtime::watcher::Error as Watch;
    let mut parts: Vec<String> = Vec::new();
    let mut next: Option<&(dyn Error + 'static)> = Some(err);
    while let Some(e) = next {
        // kube-rs's own texts embed their causes' debug dumps: name the
        // step, then go on with the cause.
        let (text, stop) = match (e.downcast_ref::<Watch>(), e.downcast_ref::<::kube::Error>()) {
            (Some(Watch::InitialListFailed(_)), _) => ("listing".to_string(), false),
            (Some(Watch::WatchStartFailed(_)), _) => ("starting a watch".to_string(), false),
            (Some(Watch::WatchFailed(_)), _) => ("watching".to_string(), false),
            (Some(Watch::WatchError(status)), _) => (format!("watching: {}", status_line(status)), true),
            (_, Some(::kube::Error::Api(status))) => (status_line(status), true),
            _ => (e.to_string(), false),
        };
        // Wrappers often repeat their source's text; keep each once.
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        if stop {
            break;
        }
        next = e.source();
    }
    let mut line = parts.join(": ");
    if line.len() > 300 {
        let cut = (0..=300).rev().find(|&i| line.is_char_boundary(i)).unwrap_or(0);
        line.truncate(cut);
        line.push('…');
    }
    line
}

pub(super) fn status_line(status: &::kube::core::Status) -> String {
    format!("{} {}: {}", status.code, status.reason, status.message)
}
