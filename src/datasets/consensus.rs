//! Consensus labels: each annotator's latest value per label, then a majority vote.
//!
//! A label nobody annotated on a record is *masked* (`None`): the record's source did not
//! label it, and training must leave it out of the loss. A tie (as many positive as negative
//! latest votes) follows the configured `TieRule`: `positive`, `negative`, or `exclude` (the
//! label is masked on that record). Any record whose latest votes disagree on some label is
//! flagged, whatever the outcome.
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::TieRule;

#[derive(Debug, Clone)]
pub struct Vote {
    pub annotator: String,
    pub label: String,
    pub value: bool,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub positive: u32,
    pub negative: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Consensus {
    /// label -> Some(0|1) or None (masked)
    pub labels: BTreeMap<String, Option<u8>>,
    pub votes: BTreeMap<String, Tally>,
    pub disagreement: bool,
    pub ties: u32,
}

/// Each annotator's latest value per label: label -> annotator -> value. Later time wins;
/// equal times: the later-listed row. The one definition of "latest" that consensus, its
/// tallies and the review queue share.
pub fn latest_values(votes: &[Vote]) -> BTreeMap<String, BTreeMap<String, bool>> {
    let mut latest: BTreeMap<(&str, &str), (&DateTime<Utc>, bool)> = BTreeMap::new();
    for v in votes {
        let key = (v.label.as_str(), v.annotator.as_str());
        match latest.get(&key) {
            Some((at, _)) if *at > &v.at => {}
            _ => {
                latest.insert(key, (&v.at, v.value));
            }
        }
    }
    let mut out: BTreeMap<String, BTreeMap<String, bool>> = BTreeMap::new();
    for ((label, annotator), (_, value)) in latest {
        out.entry(label.to_string())
            .or_default()
            .insert(annotator.to_string(), value);
    }
    out
}

/// Latest value per (annotator, label); later time wins, equal times: the later-listed row.
pub fn latest_votes(votes: &[Vote]) -> BTreeMap<String, Tally> {
    latest_values(votes)
        .into_iter()
        .map(|(label, by_annotator)| {
            let positive = by_annotator.values().filter(|v| **v).count() as u32;
            let negative = by_annotator.len() as u32 - positive;
            (label, Tally { positive, negative })
        })
        .collect()
}

/// Multi-class: each annotator's latest positive class among `classes` (annotator -> class).
pub fn latest_classes(votes: &[Vote], classes: &[String]) -> BTreeMap<String, String> {
    let mut latest_class: BTreeMap<&str, (&DateTime<Utc>, &str)> = BTreeMap::new();
    for v in votes
        .iter()
        .filter(|v| v.value && classes.contains(&v.label))
    {
        match latest_class.get(v.annotator.as_str()) {
            Some((at, _)) if *at > &v.at => {}
            _ => {
                latest_class.insert(&v.annotator, (&v.at, &v.label));
            }
        }
    }
    latest_class
        .into_iter()
        .map(|(a, (_, c))| (a.to_string(), c.to_string()))
        .collect()
}

/// Votes as `select_records` and the review queue aggregate them in SQL:
/// `[{"a": annotator, "l": label, "v": value, "t": time}, ...]`; malformed items are skipped.
pub fn votes_from_json(raw: &serde_json::Value) -> Vec<Vote> {
    raw.as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|v| {
                    Some(Vote {
                        annotator: v["a"].as_str()?.to_string(),
                        label: v["l"].as_str()?.to_string(),
                        value: v["v"].as_bool()?,
                        at: v["t"].as_str()?.parse::<DateTime<Utc>>().ok()?,
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Multi-label / binary consensus over `labels` (labels outside the schema are ignored).
pub fn multi_label(votes: &[Vote], labels: &[String], tie: TieRule) -> Consensus {
    let tallies = latest_votes(votes);
    let mut out = BTreeMap::new();
    let mut disagreement = false;
    let mut ties = 0;
    for label in labels {
        let value = match tallies.get(label) {
            None => None,
            Some(t) => {
                if t.positive > 0 && t.negative > 0 {
                    disagreement = true;
                }
                if t.positive > t.negative {
                    Some(1)
                } else if t.negative > t.positive {
                    Some(0)
                } else {
                    ties += 1;
                    match tie {
                        TieRule::Positive => Some(1),
                        TieRule::Negative => Some(0),
                        TieRule::Exclude => None,
                    }
                }
            }
        };
        out.insert(label.clone(), value);
    }
    let votes = tallies
        .into_iter()
        .filter(|(l, _)| labels.contains(l))
        .collect();
    Consensus {
        labels: out,
        votes,
        disagreement,
        ties,
    }
}

/// Multi-class consensus: each annotator's latest positive class is one vote; the plurality
/// class wins. A tie for first place is never broken by a rule: the record's labels are all
/// masked (it is flagged and left out of training).
pub fn multi_class(votes: &[Vote], classes: &[String]) -> Consensus {
    let latest_class = latest_classes(votes, classes);
    let mut tallies: BTreeMap<String, Tally> = classes
        .iter()
        .map(|c| (c.clone(), Tally::default()))
        .collect();
    for class in latest_class.values() {
        tallies.get_mut(class).expect("class in schema").positive += 1;
    }
    let best = tallies.values().map(|t| t.positive).max().unwrap_or(0);
    let winners: Vec<&String> = tallies
        .iter()
        .filter(|(_, t)| t.positive == best && best > 0)
        .map(|(c, _)| c)
        .collect();
    let disagreement = tallies.values().filter(|t| t.positive > 0).count() > 1;
    let (labels, ties) = match winners.as_slice() {
        [one] => (
            classes
                .iter()
                .map(|c| (c.clone(), Some(u8::from(c == *one))))
                .collect(),
            0,
        ),
        [] => (classes.iter().map(|c| (c.clone(), None)).collect(), 0),
        _ => (classes.iter().map(|c| (c.clone(), None)).collect(), 1),
    };
    Consensus {
        labels,
        votes: tallies
            .into_iter()
            .filter(|(_, t)| t.positive > 0)
            .collect(),
        disagreement,
        ties,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vote(annotator: &str, label: &str, value: bool, minute: i64) -> Vote {
        Vote {
            annotator: annotator.into(),
            label: label.into(),
            value,
            at: DateTime::from_timestamp(1_700_000_000 + minute * 60, 0).unwrap(),
        }
    }

    fn labels(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn latest_vote_of_each_annotator_counts() {
        // alice said yes then no; bob yes; carol no -> latest: no, yes, no -> negative.
        let votes = [
            vote("alice", "scam", true, 1),
            vote("alice", "scam", false, 2),
            vote("bob", "scam", true, 1),
            vote("carol", "scam", false, 3),
        ];
        let c = multi_label(&votes, &labels(&["scam"]), TieRule::Exclude);
        assert_eq!(c.labels["scam"], Some(0));
        assert_eq!(
            c.votes["scam"],
            Tally {
                positive: 1,
                negative: 2
            }
        );
        assert!(c.disagreement);
    }

    #[test]
    fn latest_values_keep_each_annotators_last_answer() {
        let votes = [
            vote("alice", "scam", true, 1),
            vote("alice", "scam", false, 3),
            vote("bob", "scam", true, 2),
            // Equal times: the later-listed row wins.
            vote("bob", "scam", false, 2),
            vote("carol", "ham", true, 1),
        ];
        let latest = latest_values(&votes);
        assert!(!latest["scam"]["alice"]);
        assert!(!latest["scam"]["bob"]);
        assert!(latest["ham"]["carol"]);
        assert_eq!(
            latest_votes(&votes)["scam"],
            Tally {
                positive: 0,
                negative: 2
            }
        );
        let classes = labels(&["scam", "ham"]);
        let by_annotator = latest_classes(&votes, &classes);
        assert_eq!(by_annotator["bob"], "scam");
        assert_eq!(by_annotator["carol"], "ham");
    }

    #[test]
    fn ties_follow_the_rule_and_are_flagged() {
        let votes = [vote("a", "scam", true, 1), vote("b", "scam", false, 1)];
        for (rule, want) in [
            (TieRule::Positive, Some(1)),
            (TieRule::Negative, Some(0)),
            (TieRule::Exclude, None),
        ] {
            let c = multi_label(&votes, &labels(&["scam"]), rule);
            assert_eq!(c.labels["scam"], want, "{rule:?}");
            assert!(c.disagreement);
            assert_eq!(c.ties, 1);
        }
    }

    #[test]
    fn unannotated_labels_are_masked() {
        let votes = [vote("a", "spam", true, 1)];
        let c = multi_label(
            &votes,
            &labels(&["spam", "positive_sentiment"]),
            TieRule::Exclude,
        );
        assert_eq!(c.labels["spam"], Some(1));
        assert_eq!(c.labels["positive_sentiment"], None);
        assert!(!c.disagreement);
    }

    #[test]
    fn multi_class_plurality_and_tie() {
        let classes = labels(&["cat", "dog", "eel"]);
        let votes = [
            vote("a", "cat", true, 1),
            vote("b", "dog", true, 1),
            vote("c", "cat", true, 1),
        ];
        let c = multi_class(&votes, &classes);
        assert_eq!(c.labels["cat"], Some(1));
        assert_eq!(c.labels["dog"], Some(0));
        assert!(c.disagreement);
        let tie = multi_class(&votes[..2], &classes);
        assert_eq!(tie.labels["cat"], None);
        assert_eq!(tie.ties, 1);
    }
}
