//! Where each field of a YAML text is: the line and column of every mapping key and sequence
//! item, by the same field paths as errors use (`spec.triggers[0].dedup.window`).

use std::collections::HashMap;

use granit_parser::{Event, Parser};

/// A 1-based line and column in a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Position {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

/// The positions of the fields of one YAML document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldPositions(HashMap<String, Position>);

impl FieldPositions {
    /// The position of `path`, or of the nearest field that contains it (a missing field is
    /// reported where its parent is).
    pub fn find(&self, path: &str) -> Option<Position> {
        let mut path = path;
        loop {
            if let Some(position) = self.0.get(path) {
                return Some(*position);
            }
            let cut = path.rfind(['.', '['])?;
            path = &path[..cut];
        }
    }
}

/// One parent collection while walking the events of a document.
enum Frame {
    /// A mapping: `key` is the key whose value comes next, `None` when a key comes next.
    Mapping { path: String, key: Option<String> },
    /// A sequence and the index of its next item.
    Sequence { path: String, next: usize },
}

/// The field positions of every document of `text`, in order. Parsing stops at a syntax error:
/// the documents before it keep their positions.
pub fn field_positions(text: &str) -> Vec<FieldPositions> {
    let mut documents = Vec::new();
    let mut current = FieldPositions::default();
    let mut stack: Vec<Frame> = Vec::new();
    for result in Parser::new_from_str(text) {
        let Ok((event, span)) = result else { break };
        let position = Position { line: span.start.line(), column: span.start.col().saturating_add(1) };
        match event {
            Event::DocumentStart(..) => {
                current = FieldPositions::default();
                stack.clear();
            }
            Event::DocumentEnd => documents.push(std::mem::take(&mut current)),
            Event::Scalar(value, ..) => {
                if let Some(Frame::Mapping { key: key @ None, .. }) = stack.last_mut() {
                    *key = Some(value.into_owned());
                    if let Some(path) = value_path(&stack) {
                        current.0.entry(path).or_insert(position);
                    }
                } else {
                    node_done(&mut stack, &mut current, position);
                }
            }
            Event::Alias(_) => node_done(&mut stack, &mut current, position),
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let path = node_path(&mut stack, &mut current, position);
                stack.push(if matches!(event, Event::MappingStart(..)) {
                    Frame::Mapping { path, key: None }
                } else {
                    Frame::Sequence { path, next: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                stack.pop();
                advance(&mut stack);
            }
            _ => {}
        }
    }
    documents
}

/// The path of the value the top frame expects next, when it is a mapping value.
fn value_path(stack: &[Frame]) -> Option<String> {
    match stack.last()? {
        Frame::Mapping { path, key: Some(key) } => Some(join(path, key)),
        _ => None,
    }
}

/// Records a node that starts at `position` and returns its path; a mapping value keeps the
/// position of its key, recorded when the key was read.
fn node_path(stack: &mut [Frame], current: &mut FieldPositions, position: Position) -> String {
    match stack.last() {
        None => String::new(),
        Some(Frame::Mapping { path, key: Some(key) }) => join(path, key),
        // A complex key (a mapping used as a key): not a field path anyone reports.
        Some(Frame::Mapping { path, key: None }) => path.clone(),
        Some(Frame::Sequence { path, next }) => {
            let item = format!("{path}[{next}]");
            current.0.entry(item.clone()).or_insert(position);
            item
        }
    }
}

/// A scalar or alias value is complete.
fn node_done(stack: &mut [Frame], current: &mut FieldPositions, position: Position) {
    node_path(stack, current, position);
    advance(stack);
}

/// The top frame's current entry is complete: a mapping waits for its next key, a sequence
/// moves to its next item.
fn advance(stack: &mut [Frame]) {
    match stack.last_mut() {
        Some(Frame::Mapping { key, .. }) => *key = None,
        Some(Frame::Sequence { next, .. }) => *next = next.saturating_add(1),
        None => {}
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
apiVersion: ktrigger.dev/v1alpha1
kind: TriggerService
spec:
  triggers:
  - name: a
    dedup: {key: x, window: 10}
  - name: b
    destinations:
    - type: log
---
triggers:
- source: {type: cron}
";

    #[test]
    fn keys_and_items_have_their_line_and_column() {
        let documents = field_positions(TEXT);
        assert_eq!(documents.len(), 2);
        let first = &documents[0];
        assert_eq!(first.find("spec"), Some(Position { line: 3, column: 1 }));
        assert_eq!(first.find("spec.triggers[0]"), Some(Position { line: 5, column: 5 }));
        assert_eq!(first.find("spec.triggers[0].dedup.window"), Some(Position { line: 6, column: 21 }));
        assert_eq!(first.find("spec.triggers[1].destinations[0].type"), Some(Position { line: 9, column: 7 }));
        assert_eq!(documents[1].find("triggers[0].source.type"), Some(Position { line: 12, column: 12 }));
    }

    #[test]
    fn a_missing_field_is_found_at_its_parent() {
        let documents = field_positions(TEXT);
        assert_eq!(documents[0].find("spec.triggers[1].source"), Some(Position { line: 7, column: 5 }));
        assert_eq!(documents[0].find("nothing"), None);
    }
}
