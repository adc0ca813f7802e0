//! Text shared by the command line and the workbench: durations, truncation, metric values.

/// `1m05s`, or `2h03m` past an hour.
pub fn duration(s: f64) -> String {
    let s = s.max(0.0) as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// How long ago, from seconds: `4s ago`, `3m ago`, `2h ago`.
pub fn ago(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        _ => format!("{}h ago", s / 3600),
    }
}

/// At most `n` characters, with an ellipsis when cut.
pub fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n.saturating_sub(1)).collect::<String>() + "…"
    }
}

/// A metric value with four decimals, or `-` when there is none yet.
pub fn metric(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into())
}

/// A fraction as a percentage with two decimals.
pub fn percent(v: f64) -> String {
    format!("{:.2}%", v * 100.0)
}

/// A size in bytes for people: "512 B", "3.2 MB", "24.0 GB".
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_and_truncation() {
        assert_eq!(super::duration(65.4), "1m05s");
        assert_eq!(super::duration(7380.0), "2h03m");
        assert_eq!(super::truncate("experiment", 5), "expe…");
        assert_eq!(super::truncate("exp", 5), "exp");
        assert_eq!(super::metric(None), "-");
        assert_eq!(super::percent(0.8123), "81.23%");
        assert_eq!(
            (super::ago(4.2), super::ago(200.0)),
            ("4s ago".into(), "3m ago".into())
        );
    }
}
