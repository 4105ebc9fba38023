//! Parsing JSON within a memory budget.
//!
//! A parsed JSON tree takes several times the bytes of its text (a `serde_json::Value` is 32
//! bytes, so `[0,0,0,…]` grows sixteenfold), so a limit on the bytes read does not bound memory.
//! Here every value is charged its estimated size in memory as it is built, and parsing stops as
//! soon as the budget is spent, before the rest is allocated.

use std::cell::Cell;
use std::fmt;
use std::mem::size_of;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Estimated bookkeeping of one map entry beyond its key and value (tree node share, pointers).
const MAP_ENTRY_OVERHEAD: usize = 32;

/// Why a document could not be parsed.
#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    /// The parsed tree would take more than the budget.
    OverBudget,
    /// The text is not JSON.
    Invalid(String),
}

/// Parses `text` into a tree whose estimated size in memory is at most `budget` bytes.
pub fn parse(text: &[u8], budget: usize) -> Result<Value, ParseError> {
    let left = Cell::new(budget);
    let over = Cell::new(false);
    let mut deserializer = serde_json::Deserializer::from_slice(text);
    let parsed = Budgeted { left: &left, over: &over }.deserialize(&mut deserializer).and_then(|value| {
        deserializer.end()?;
        Ok(value)
    });
    match parsed {
        Ok(value) => Ok(value),
        Err(_) if over.get() => Err(ParseError::OverBudget),
        Err(error) => Err(ParseError::Invalid(error.to_string())),
    }
}

#[derive(Clone, Copy)]
struct Budgeted<'a> {
    left: &'a Cell<usize>,
    over: &'a Cell<bool>,
}

impl Budgeted<'_> {
    fn charge<E: de::Error>(&self, bytes: usize) -> Result<(), E> {
        match self.left.get().checked_sub(bytes) {
            Some(left) => {
                self.left.set(left);
                Ok(())
            }
            None => {
                self.over.set(true);
                Err(E::custom("over the memory budget"))
            }
        }
    }
}

impl<'de> DeserializeSeed<'de> for Budgeted<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.charge(size_of::<Value>())?;
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Budgeted<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Value, E> {
        Ok(Number::from_f64(value).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Value, E> {
        self.charge(value.len())?;
        Ok(Value::String(value.to_string()))
    }

    fn visit_string<E: de::Error>(self, value: String) -> Result<Value, E> {
        self.charge(value.len())?;
        Ok(Value::String(value))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut fields = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            self.charge(key.len() + size_of::<String>() + MAP_ENTRY_OVERHEAD)?;
            let value = map.next_value_seed(self)?;
            fields.insert(key, value);
        }
        Ok(Value::Object(fields))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Estimated size in memory of a parsed tree, counted as [`parse`] charges it.
    fn size_of_tree(value: &Value) -> usize {
        size_of::<Value>()
            + match value {
                Value::String(text) => text.len(),
                Value::Array(items) => items.iter().map(size_of_tree).fold(0, usize::saturating_add),
                Value::Object(fields) => fields
                    .iter()
                    .map(|(key, field)| key.len() + size_of::<String>() + MAP_ENTRY_OVERHEAD + size_of_tree(field))
                    .fold(0, usize::saturating_add),
                _ => 0,
            }
    }

    #[test]
    fn documents_within_the_budget_parse_as_serde_json_does() {
        let text = br#"{"items": [{"id": 1, "name": "a", "ok": true, "n": null, "f": 1.5, "neg": -3}], "s": "x"}"#;
        let expected: Value = serde_json::from_slice(text).unwrap();
        assert_eq!(parse(text, usize::MAX).unwrap(), expected);
        let exact = size_of_tree(&expected);
        assert_eq!(parse(text, exact).unwrap(), expected, "the charge is the estimate");
        assert_eq!(parse(text, exact - 1), Err(ParseError::OverBudget));
    }

    #[test]
    fn small_text_that_grows_large_in_memory_is_stopped() {
        let text = format!("[{}0]", "0,".repeat(100_000));
        assert_eq!(text.len(), 200_003);
        assert_eq!(parse(text.as_bytes(), 20 * text.len()).map(|v| v.as_array().unwrap().len()), Ok(100_001));
        assert_eq!(parse(text.as_bytes(), 10 * text.len()), Err(ParseError::OverBudget));
    }

    #[test]
    fn invalid_json_and_trailing_text_are_invalid() {
        assert!(matches!(parse(b"{\"a\": ", 1 << 20), Err(ParseError::Invalid(_))));
        assert!(matches!(parse(b"{} {}", 1 << 20), Err(ParseError::Invalid(_))));
        assert!(matches!(parse(b"<html>", 1 << 20), Err(ParseError::Invalid(_))));
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(matches!(parse(deep.as_bytes(), usize::MAX), Err(ParseError::Invalid(_))), "depth is limited");
        assert_eq!(size_of_tree(&json!(null)), size_of::<Value>());
    }
}
