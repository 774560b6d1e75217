//! Reading Prometheus text exposition as served on `/metrics`.

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    /// The raw text between `{` and `}`, empty when unlabelled.
    pub labels: String,
    pub value: f64,
}

/// All samples in `text`, comments and unparsable lines skipped.
pub fn samples(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = line[open..].find('}')? + open;
            (&line[..open], &line[open + 1..close], &line[close + 1..])
        }
        None => {
            let space = line.find(char::is_whitespace)?;
            (&line[..space], "", &line[space..])
        }
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample { name: name.trim().to_owned(), labels: labels.to_owned(), value })
}

/// Sum of every sample of metric `name` whose label text contains
/// `label_contains` (e.g. `reason="malformed_datagram"`; empty matches all).
pub fn metric_sum(text: &str, name: &str, label_contains: &str) -> f64 {
    metric_sum_labels(text, name, &[label_contains])
}

/// Sum of every sample of metric `name` whose label text contains all of
/// `labels` (e.g. `["direction=\"out\"", "path=\"fastdp\""]`).
pub fn metric_sum_labels(text: &str, name: &str, labels: &[&str]) -> f64 {
    samples(text)
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|l| s.labels.contains(l)))
        .map(|s| s.value)
        .sum()
}

/// Sum over every metric whose name contains `name_contains`, with labels
/// containing `label_contains`.
pub fn metric_sum_matching(text: &str, name_contains: &str, label_contains: &str) -> f64 {
    samples(text)
        .iter()
        .filter(|s| s.name.contains(name_contains) && s.labels.contains(label_contains))
        .map(|s| s.value)
        .sum()
}
