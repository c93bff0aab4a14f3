//! Topic → priority class. Rules are checked in order and the first filter that matches wins,
//! so operators write the specific rules first and the catch-alls last; a topic no rule matches
//! goes to the default class.

use crate::store::ClassId;
use crate::topic::{filter_matches, validate_filter};

/// Maps a topic name to the class whose log stores it.
#[derive(Debug, Clone)]
pub struct Classifier {
    rules: Vec<(String, ClassId)>,
    default: ClassId,
}

impl Classifier {
    /// `rules` are `(topic filter, class)` pairs, checked in order. Filters are expected to be
    /// valid (the config checks them); an invalid one simply never matches.
    pub fn new(rules: Vec<(String, ClassId)>, default: ClassId) -> Self {
        for (filter, _) in &rules {
            if let Err(e) = validate_filter(filter) {
                tracing::warn!(filter = %filter, error = %e, "classification rule never matches");
            }
        }
        Classifier { rules, default }
    }

    /// Everything goes to `class`.
    pub fn single(class: ClassId) -> Self {
        Classifier {
            rules: Vec::new(),
            default: class,
        }
    }

    /// Every class this classifier can return (the default and each rule's).
    pub fn classes(&self) -> impl Iterator<Item = ClassId> + '_ {
        std::iter::once(self.default).chain(self.rules.iter().map(|(_, c)| *c))
    }

    pub fn classify(&self, topic: &str) -> ClassId {
        self.rules
            .iter()
            .find(|(filter, _)| filter_matches(filter, topic))
            .map(|(_, class)| *class)
            .unwrap_or(self.default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_match_wins_and_default_applies() {
        let c = Classifier::new(
            vec![
                ("alarms/#".into(), 0),
                ("site/+/alarm".into(), 0),
                ("site/#".into(), 1),
            ],
            2,
        );
        assert_eq!(c.classify("alarms/fire"), 0);
        assert_eq!(c.classify("alarms"), 0);
        assert_eq!(c.classify("site/a/alarm"), 0);
        assert_eq!(c.classify("site/a/temp"), 1);
        assert_eq!(c.classify("other"), 2);
        assert_eq!(Classifier::single(3).classify("x"), 3);
    }
}
