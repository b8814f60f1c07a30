//! `disagreement`: documents whose annotators' latest votes disagree on a label of the model
//! (each annotator's latest value counts once, as in consensus: an annotator who changed their
//! mind counts with their last answer). The most split first (minority share nearest 1/2),
//! then more votes first, then document id. A document with several disagreeing labels is
//! listed once, under its most split label. Multi-class: the annotators' latest classes differ.
use std::collections::BTreeMap;

use sqlx::PgConnection;

use super::store::{sort_keyed, Keyed, Stager};
use super::ReviewVersion;
use super::{
    f3, stream_documents_into, AnnotatorVote, Counts, DocColumns, Ranked, Ranking, Reason,
    ReviewError,
};
use crate::config::Settings;
use crate::datasets::consensus::{self, Vote};
use crate::datasets::TaskType;

/// One document's item and sort key: (0, −minority share, −votes, document id), or None when
/// its latest votes agree on every considered label.
pub fn keyed_disagreement(
    version: &ReviewVersion,
    considered: &[String],
    id: i64,
    votes: &[Vote],
) -> Option<Keyed> {
    let (share, total, reason, explanation) = match version.task {
        TaskType::MultiClass => split_classes(version, considered, votes),
        TaskType::Binary | TaskType::MultiLabel => split_label(considered, votes),
    }?;
    Some(Keyed {
        key: (0, -share, -i64::from(total), id),
        item: Ranked {
            document_id: id,
            reason,
            explanation,
        },
    })
}

/// Ranks the documents' votes (document id -> votes on the model's labels).
pub fn rank_disagreement(
    version: &ReviewVersion,
    considered: &[String],
    votes: &BTreeMap<i64, Vec<Vote>>,
) -> Vec<Ranked> {
    sort_keyed(
        votes
            .iter()
            .filter_map(|(id, v)| keyed_disagreement(version, considered, *id, v))
            .collect(),
    )
}

type Found = (f64, u32, Reason, String);

fn split_label(considered: &[String], votes: &[Vote]) -> Option<Found> {
    let latest = consensus::latest_values(votes);
    let mut best: Option<(f64, u32, &String, &BTreeMap<String, bool>)> = None;
    // In the model's label order (`considered` keeps it): ties go to the first label.
    for label in considered {
        let Some(by_annotator) = latest.get(label) else {
            continue;
        };
        let positive = by_annotator.values().filter(|v| **v).count() as u32;
        let total = by_annotator.len() as u32;
        let negative = total - positive;
        if positive == 0 || negative == 0 {
            continue;
        }
        let share = positive.min(negative) as f64 / total as f64;
        let better = match best {
            None => true,
            Some((s, t, _, _)) => share > s || (share == s && total > t),
        };
        if better {
            best = Some((share, total, label, by_annotator));
        }
    }
    let (share, total, label, by_annotator) = best?;
    let positive = by_annotator.values().filter(|v| **v).count();
    let listed: Vec<String> = by_annotator
        .iter()
        .map(|(a, v)| format!("{a}={v}"))
        .collect();
    let explanation = format!(
        "latest votes on `{label}` split {positive} true / {} false ({})",
        total as usize - positive,
        listed.join(", ")
    );
    Some((
        share,
        total,
        Reason::Disagreement {
            label: Some(label.clone()),
            annotators: by_annotator
                .iter()
                .map(|(a, v)| AnnotatorVote {
                    annotator: a.clone(),
                    value: Some(*v),
                    class: None,
                })
                .collect(),
            minority_share: share,
            votes: total,
        },
        explanation,
    ))
}

fn split_classes(version: &ReviewVersion, considered: &[String], votes: &[Vote]) -> Option<Found> {
    let latest = consensus::latest_classes(votes, &version.labels);
    let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
    for class in latest.values() {
        *counts.entry(class.as_str()).or_default() += 1;
    }
    if counts.len() < 2 || !counts.keys().any(|c| considered.iter().any(|l| l == c)) {
        return None;
    }
    let total = latest.len() as u32;
    let top = counts.values().copied().max().unwrap_or(0);
    let share = 1.0 - top as f64 / total as f64;
    let listed: Vec<String> = latest.iter().map(|(a, c)| format!("{a}={c}")).collect();
    let explanation = format!(
        "latest classes differ: {} (minority share {})",
        listed.join(", "),
        f3(share)
    );
    Some((
        share,
        total,
        Reason::Disagreement {
            label: None,
            annotators: latest
                .iter()
                .map(|(a, c)| AnnotatorVote {
                    annotator: a.clone(),
                    value: None,
                    class: Some(c.clone()),
                })
                .collect(),
            minority_share: share,
            votes: total,
        },
        explanation,
    ))
}

/// Streams the source's documents with their votes, and stages each split one.
pub(super) async fn compute(
    reader: &mut PgConnection,
    stager: Option<&mut Stager<'_>>,
    settings: &Settings,
    version: &ReviewVersion,
    source: Option<&str>,
    labels: &[String],
) -> Result<Ranking, ReviewError> {
    let mut annotated = 0i64;
    let columns = DocColumns {
        scores: false,
        votes: true,
    };
    stream_documents_into(reader, stager, settings, version, source, columns, |doc| {
        if doc.votes.is_empty() {
            return Vec::new();
        }
        annotated += 1;
        keyed_disagreement(version, labels, doc.id, &doc.votes)
            .into_iter()
            .collect()
    })
    .await?;
    Ok(Ranking {
        counts: Counts {
            annotated: Some(annotated),
            ..Counts::default()
        },
        labels: labels.to_vec(),
        ..Ranking::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;

    fn vote(annotator: &str, label: &str, value: bool, minute: i64) -> Vote {
        Vote {
            annotator: annotator.into(),
            label: label.into(),
            value,
            at: DateTime::from_timestamp(1_700_000_000 + minute * 60, 0).unwrap(),
        }
    }

    fn version(task: TaskType, labels: &[&str]) -> ReviewVersion {
        ReviewVersion {
            model: "m".into(),
            version: 1,
            task,
            labels: labels.iter().map(|s| s.to_string()).collect(),
            thresholds: vec![0.5; labels.len()],
            embedding_model: "e".into(),
        }
    }

    #[test]
    fn most_split_first_then_more_votes_and_only_latest_votes_count() {
        let v = version(TaskType::MultiLabel, &["spam", "pos"]);
        let votes: BTreeMap<i64, Vec<Vote>> = [
            // 1 of 3 against: share 1/3.
            (
                1,
                vec![
                    vote("a", "spam", true, 1),
                    vote("b", "spam", true, 1),
                    vote("c", "spam", false, 1),
                ],
            ),
            // 2 vs 2 on pos: share 1/2, 4 votes.
            (
                2,
                vec![
                    vote("a", "pos", true, 1),
                    vote("b", "pos", true, 1),
                    vote("c", "pos", false, 1),
                    vote("d", "pos", false, 1),
                ],
            ),
            // 1 vs 1: share 1/2, 2 votes.
            (
                3,
                vec![vote("a", "spam", true, 1), vote("b", "spam", false, 1)],
            ),
            // a changed their mind: latest votes agree (false, false): not listed.
            (
                4,
                vec![
                    vote("a", "spam", true, 1),
                    vote("a", "spam", false, 2),
                    vote("b", "spam", false, 1),
                ],
            ),
        ]
        .into_iter()
        .collect();
        let all = v.labels.clone();
        let ranked = rank_disagreement(&v, &all, &votes);
        let ids: Vec<i64> = ranked.iter().map(|r| r.document_id).collect();
        assert_eq!(ids, vec![2, 3, 1]);
        match &ranked[0].reason {
            Reason::Disagreement {
                label,
                annotators,
                minority_share,
                votes,
            } => {
                assert_eq!(label.as_deref(), Some("pos"));
                assert_eq!(annotators.len(), 4);
                assert_eq!(*minority_share, 0.5);
                assert_eq!(*votes, 4);
            }
            other => panic!("{other:?}"),
        }
        let spam_only = rank_disagreement(&v, &["spam".to_string()], &votes);
        let ids: Vec<i64> = spam_only.iter().map(|r| r.document_id).collect();
        assert_eq!(ids, vec![3, 1]);
    }

    #[test]
    fn multi_class_disagreement_is_about_latest_classes() {
        let v = version(TaskType::MultiClass, &["cat", "dog"]);
        let votes: BTreeMap<i64, Vec<Vote>> = [
            (
                1,
                vec![vote("a", "cat", true, 1), vote("b", "dog", true, 1)],
            ),
            (
                2,
                vec![
                    vote("a", "cat", true, 1),
                    vote("b", "dog", true, 1),
                    vote("b", "cat", true, 2),
                ],
            ),
        ]
        .into_iter()
        .collect();
        let all = v.labels.clone();
        let ranked = rank_disagreement(&v, &all, &votes);
        assert_eq!(ranked.len(), 1);
        assert_eq!(ranked[0].document_id, 1);
    }
}
