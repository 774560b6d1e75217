//! API errors as one short line for logs and `weft status`.

use std::error::Error;

/// The error and its causes, without kube-rs's debug dumps, e.g.
/// `listing nodes: error trying to connect: tcp connect error: Connection
/// refused (os error 111)` or `403 Forbidden: nodes is forbidden: …`.
pub(super) fn describe(err: &(dyn Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next: Option<&(dyn Error + 'static)> = Some(err);
    while let Some(e) = next {
        let text = match e.downcast_ref::<::kube::Error>() {
            Some(::kube::Error::Api(status)) => status_line(status),
            _ => e.to_string(),
        };
        // Wrappers often repeat their source's text; keep each once.
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        if matches!(e.downcast_ref::<::kube::Error>(), Some(::kube::Error::Api(_))) {
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
