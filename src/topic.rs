//! MQTT topic names and topic filters (MQTT 3.1.1 §4.7, 5.0 §4.7), shared by classification,
//! ACLs and forwarding rules.

/// True when `topic` (a concrete topic name) matches `filter` (which may contain `+` and `#`).
///
/// Follows the spec: `#` matches the parent level too (`a/#` matches `a`), and filters that
/// start with a wildcard do not match topics that start with `$`.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Checks a topic filter: non-empty, `#` only as the whole last level, `+` only as a whole level.
pub fn validate_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("a topic filter must not be empty".into());
    }
    if filter.contains('\0') {
        return Err("a topic filter must not contain NUL".into());
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(format!(
                "`#` must be the whole last level of a filter (in `{filter}`)"
            ));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!(
                "`+` must be a whole level of a filter (in `{filter}`)"
            ));
        }
    }
    Ok(())
}

/// Checks a topic name used in PUBLISH: non-empty, no wildcards, no NUL.
pub fn validate_topic_name(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("the topic name is empty".into());
    }
    if topic.contains(['+', '#']) {
        return Err(format!(
            "wildcards are not allowed in a topic name (`{topic}`)"
        ));
    }
    if topic.contains('\0') {
        return Err("the topic name contains NUL".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching() {
        assert!(filter_matches("a/#", "a"));
        assert!(filter_matches("a/#", "a/b/c"));
        assert!(filter_matches("a/+/c", "a/b/c"));
        assert!(!filter_matches("a/+/c", "a/b/d"));
        assert!(filter_matches("#", "x/y"));
        assert!(!filter_matches("#", "$SYS/x"));
        assert!(!filter_matches("a/b", "a/b/c"));
        assert!(!filter_matches("a/b/c", "a/b"));
        assert!(filter_matches("+/+", "a/"));
    }

    #[test]
    fn validation() {
        assert!(validate_filter("a/#").is_ok());
        assert!(validate_filter("a/#/b").is_err());
        assert!(validate_filter("a/b+").is_err());
        assert!(validate_topic_name("a/+").is_err());
        assert!(validate_topic_name("a/b").is_ok());
    }
}
