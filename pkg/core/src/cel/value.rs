//! CEL views that borrow what they show: parsed JSON, and the `event` and `context` records.
//!
//! Nothing here converts a whole object. A JSON container becomes a [`JsonVal`] that looks up a
//! field, an element or a size only when the expression asks for it; scalars become the
//! built-in CEL values (strings borrowed, integers as `int`) so that every standard function
//! and operator accepts them.

use std::borrow::Cow;
use std::sync::{LazyLock, OnceLock};

use cel::ExecutionError;
use cel::common::traits::{self, Container, Indexer, Iterable, Sizer, Zeroer};
use cel::common::types::{
    CelBool, CelDouble, CelDuration, CelInt, CelNull, CelString, CelTimestamp, CelUInt, Kind, LIST_TYPE, MAP_TYPE, Type,
};
use cel::common::value::{CowVal, Val};
use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};
use serde_json::Value;

use crate::event::{EventMeta, rfc3339};

/// One value bound to a name or held by a container, stored inline (no allocation).
#[derive(Debug, Clone)]
pub(crate) enum Bound<'a> {
    /// `null`.
    Null(CelNull),
    /// A `bool`.
    Bool(CelBool),
    /// An `int`: every JSON integer that fits in an `i64`.
    Int(CelInt),
    /// A `uint`: JSON integers above `i64::MAX`.
    UInt(CelUInt),
    /// A `double`.
    Double(CelDouble),
    /// A `string`, borrowed when it comes from JSON.
    Str(CelString<'a>),
    /// A JSON array or object, viewed lazily.
    Json(JsonVal<'a>),
    /// A `timestamp`.
    Time(CelTimestamp),
    /// A `duration`.
    Duration(CelDuration),
    /// The `event` or `context` record.
    Record(Record<'a>),
}

impl<'a> Bound<'a> {
    /// The CEL view of a JSON value: scalars converted, containers wrapped.
    pub(crate) fn json(value: &'a Value) -> Self {
        View::json(value).into_bound()
    }

    /// The value as a CEL value.
    pub(crate) fn as_val(&self) -> &(dyn Val + 'a) {
        match self {
            Bound::Null(v) => v,
            Bound::Bool(v) => v,
            Bound::Int(v) => v,
            Bound::UInt(v) => v,
            Bound::Double(v) => v,
            Bound::Str(v) => v,
            Bound::Json(v) => v,
            Bound::Time(v) => v,
            Bound::Duration(v) => v,
            Bound::Record(v) => v,
        }
    }

    /// The value as an owned CEL value, for an indexer's result.
    fn boxed(self) -> Box<dyn Val + 'a> {
        match self {
            Bound::Null(v) => Box::new(v),
            Bound::Bool(v) => Box::new(v),
            Bound::Int(v) => Box::new(v),
            Bound::UInt(v) => Box::new(v),
            Bound::Double(v) => Box::new(v),
            Bound::Str(v) => Box::new(v),
            Bound::Json(v) => Box::new(v),
            Bound::Time(v) => Box::new(v),
            Bound::Duration(v) => Box::new(v),
            Bound::Record(v) => Box::new(v),
        }
    }
}

/// A value as the direct evaluator (`fast.rs`) passes it around: like [`Bound`], but plain data
/// that borrows for one lifetime and converts to a [`Bound`] when a CEL operation needs it.
#[derive(Debug, Clone)]
pub(crate) enum View<'v> {
    /// `null`.
    Null,
    /// A `bool`.
    Bool(bool),
    /// An `int`.
    Int(i64),
    /// A `uint`.
    UInt(u64),
    /// A `double`.
    Double(f64),
    /// A `string`.
    Str(Cow<'v, str>),
    /// A JSON array or object.
    Json(&'v Value),
    /// A `timestamp`.
    Time(DateTime<FixedOffset>),
    /// A `duration`.
    Duration(chrono::Duration),
    /// The `event` or `context` record.
    Record(Record<'v>),
}

impl<'v> View<'v> {
    /// A JSON value: scalars as CEL scalars (integers that fit as `int`, larger ones as `uint`),
    /// arrays and objects as they are.
    pub(crate) fn json(value: &'v Value) -> Self {
        match value {
            Value::Null => View::Null,
            Value::Bool(b) => View::Bool(*b),
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    View::Int(i)
                } else if let Some(u) = n.as_u64() {
                    View::UInt(u)
                } else {
                    View::Double(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            Value::String(s) => View::Str(Cow::Borrowed(s)),
            Value::Array(_) | Value::Object(_) => View::Json(value),
        }
    }

    /// The view of a bound value.
    pub(crate) fn of(bound: &'v Bound<'_>) -> Self {
        match bound {
            Bound::Null(_) => View::Null,
            Bound::Bool(b) => View::Bool(*b.inner()),
            Bound::Int(i) => View::Int(*i.inner()),
            Bound::UInt(u) => View::UInt(*u.inner()),
            Bound::Double(d) => View::Double(*d.inner()),
            Bound::Str(s) => View::Str(Cow::Borrowed(s.inner())),
            Bound::Json(j) => View::Json(j.value),
            Bound::Time(t) => View::Time(*t.inner()),
            Bound::Duration(d) => View::Duration(*d.inner()),
            Bound::Record(r) => View::Record(r.clone()),
        }
    }

    /// A scalar CEL value copied into a view; `None` for lists, maps and other kinds.
    pub(crate) fn scalar(val: &dyn Val) -> Option<View<'static>> {
        Some(match val.get_type().kind() {
            Kind::NullType => View::Null,
            Kind::Boolean => View::Bool(*val.downcast_ref::<CelBool>()?.inner()),
            Kind::Int => View::Int(*val.downcast_ref::<CelInt>()?.inner()),
            Kind::UInt => View::UInt(*val.downcast_ref::<CelUInt>()?.inner()),
            Kind::Double => View::Double(*val.downcast_ref::<CelDouble>()?.inner()),
            Kind::String => View::Str(Cow::Owned(val.downcast_ref::<CelString>()?.inner().to_owned())),
            Kind::Timestamp => View::Time(*val.downcast_ref::<CelTimestamp>()?.inner()),
            Kind::Duration => View::Duration(*val.downcast_ref::<CelDuration>()?.inner()),
            _ => return None,
        })
    }

    /// The same view, borrowing from `self` (what a constant hands out on each evaluation).
    pub(crate) fn borrowed(&self) -> View<'_> {
        match self {
            View::Str(s) => View::Str(Cow::Borrowed(s)),
            other => other.clone(),
        }
    }

    /// The CEL value, for the operations of the `cel` crate.
    pub(crate) fn into_bound(self) -> Bound<'v> {
        match self {
            View::Null => Bound::Null(CelNull),
            View::Bool(b) => Bound::Bool(b.into()),
            View::Int(i) => Bound::Int(i.into()),
            View::UInt(u) => Bound::UInt(u.into()),
            View::Double(d) => Bound::Double(d.into()),
            View::Str(s) => Bound::Str(CelString::from(s)),
            View::Json(v) => Bound::Json(JsonVal::new(v)),
            View::Time(t) => Bound::Time(t.into()),
            View::Duration(d) => Bound::Duration(d.into()),
            View::Record(r) => Bound::Record(r),
        }
    }

    /// The CEL value, borrowing from `self`.
    pub(crate) fn to_bound(&self) -> Bound<'_> {
        self.borrowed().into_bound()
    }
}

/// A borrowed JSON array (CEL `list`) or object (CEL `map`).
///
/// Field access, indexing, `has()`, `size()`, `in` and equality read the JSON in place. Only the
/// comprehensions (`all`, `exists`, `map`, `filter`, ...) need the elements as CEL values: they
/// are made once, on the first iteration, and kept for the life of this view.
pub(crate) struct JsonVal<'a> {
    value: &'a Value,
    items: OnceLock<Vec<Bound<'a>>>,
}

impl<'a> JsonVal<'a> {
    fn new(value: &'a Value) -> Self {
        JsonVal { value, items: OnceLock::new() }
    }

    /// The elements of an array, or the keys of an object, as CEL values.
    fn items(&self) -> &[Bound<'a>] {
        self.items.get_or_init(|| match self.value {
            Value::Array(list) => list.iter().map(Bound::json).collect(),
            Value::Object(map) => map.keys().map(|k| Bound::Str(CelString::from(k.as_str()))).collect(),
            _ => Vec::new(),
        })
    }

    fn len(&self) -> usize {
        match self.value {
            Value::Array(list) => list.len(),
            Value::Object(map) => map.len(),
            _ => 0,
        }
    }
}

impl Clone for JsonVal<'_> {
    fn clone(&self) -> Self {
        JsonVal::new(self.value)
    }
}

impl std::fmt::Debug for JsonVal<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.value)
    }
}

impl<'a> Val for JsonVal<'a> {
    fn get_type(&self) -> &Type {
        if self.value.is_array() { &LIST_TYPE } else { &MAP_TYPE }
    }

    fn cel_type() -> &'static Type {
        // The CEL type depends on the JSON value; `dyn` is the only static answer.
        &cel::common::types::DYN_TYPE
    }

    fn as_container(&self) -> Option<&dyn Container> {
        Some(self)
    }

    fn as_indexer<'b, 'v>(&'b self) -> Option<&'b (dyn Indexer + 'v)>
    where
        Self: 'v,
    {
        Some(self)
    }

    fn as_iterable<'b, 'v>(&'b self) -> Option<&'b (dyn Iterable + 'v)>
    where
        Self: 'v,
    {
        Some(self)
    }

    fn as_sizer(&self) -> Option<&dyn Sizer> {
        Some(self)
    }

    fn as_zeroer(&self) -> Option<&dyn Zeroer> {
        Some(self)
    }

    fn equals(&self, other: &dyn Val) -> bool {
        match self.value {
            Value::Array(list) => {
                other.get_type().kind() == Kind::List
                    && other.as_sizer().is_some_and(|s| *s.size().inner() == list.len() as i64)
                    && other.as_iterable().is_some_and(|it| {
                        let mut theirs = it.iter();
                        list.iter().all(|mine| theirs.next().is_some_and(|t| Bound::json(mine).as_val().equals(t)))
                    })
            }
            Value::Object(map) => {
                other.get_type().kind() == Kind::Map
                    && other.as_sizer().is_some_and(|s| *s.size().inner() == map.len() as i64)
                    && other.as_indexer().is_some_and(|theirs| {
                        map.iter().all(|(k, mine)| {
                            theirs
                                .get(&CelString::from(k.as_str()))
                                .is_ok_and(|t| Bound::json(mine).as_val().equals(&*t))
                        })
                    })
            }
            _ => false,
        }
    }

    fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v>
    where
        Self: 'v,
    {
        Box::new(self.clone())
    }
}

/// The position `idx` designates in a list of `len` elements.
fn list_index(idx: &dyn Val, len: usize) -> Result<usize, ExecutionError> {
    let wanted: Option<i128> = if let Some(i) = idx.downcast_ref::<CelInt>() {
        Some(i128::from(*i.inner()))
    } else if let Some(u) = idx.downcast_ref::<CelUInt>() {
        Some(i128::from(*u.inner()))
    } else if let Some(d) = idx.downcast_ref::<CelDouble>() {
        let d = *d.inner();
        (d.fract() == 0.0 && d.abs() < 1e18).then_some(d as i128)
    } else {
        None
    };
    let Some(wanted) = wanted else {
        return Err(ExecutionError::UnexpectedType { got: idx.get_type().name().to_owned(), want: "int".to_owned() });
    };
    usize::try_from(wanted)
        .ok()
        .filter(|i| *i < len)
        .ok_or_else(|| ExecutionError::IndexOutOfBounds(i64::try_from(wanted).unwrap_or(i64::MAX).into()))
}

/// Whether `key` has a type CEL allows as a map key.
fn is_key_type(key: &dyn Val) -> bool {
    matches!(key.get_type().kind(), Kind::String | Kind::Int | Kind::UInt | Kind::Boolean | Kind::Double)
}

impl<'a> Indexer for JsonVal<'a> {
    fn get<'b, 'v>(&'b self, idx: &dyn Val) -> Result<CowVal<'b, 'v>, ExecutionError>
    where
        Self: 'v,
    {
        match self.value {
            Value::Array(list) => {
                let i = list_index(idx, list.len())?;
                Ok(CowVal::Owned(Bound::json(&list[i]).boxed()))
            }
            Value::Object(map) => match idx.downcast_ref::<CelString>() {
                Some(key) => match map.get(key.inner()) {
                    Some(v) => Ok(CowVal::Owned(Bound::json(v).boxed())),
                    None => Err(ExecutionError::no_such_key(key.inner())),
                },
                // JSON objects only have string keys: another key type is simply absent.
                None if is_key_type(idx) => Err(ExecutionError::no_such_key(&format!("{idx:?}"))),
                None => Err(ExecutionError::UnexpectedType {
                    got: idx.get_type().name().to_owned(),
                    want: "map key".to_owned(),
                }),
            },
            _ => Err(ExecutionError::no_such_key("")),
        }
    }

    fn steal<'v>(self: Box<Self>, idx: &dyn Val) -> Result<Box<dyn Val + 'v>, ExecutionError>
    where
        Self: 'v,
    {
        self.get(idx).map(CowVal::into_owned)
    }
}

/// Lends out the CEL values of a slice of [`Bound`]s.
struct BoundIter<'b, 'a>(std::slice::Iter<'b, Bound<'a>>);

impl<'b, 'v, 'a: 'v> traits::Iterator<'b, 'v> for BoundIter<'b, 'a> {
    fn next(&mut self) -> Option<&'b (dyn Val + 'v)> {
        self.0.next().map(|b| b.as_val() as &(dyn Val + 'v))
    }
}

impl<'a> Iterable for JsonVal<'a> {
    fn iter<'b, 'v>(&'b self) -> Box<dyn traits::Iterator<'b, 'v> + 'b>
    where
        Self: 'v,
    {
        Box::new(BoundIter(self.items().iter()))
    }
}

impl Sizer for JsonVal<'_> {
    fn size(&self) -> CelInt {
        (self.len() as i64).into()
    }
}

impl Zeroer for JsonVal<'_> {
    fn is_zero_value(&self) -> bool {
        self.len() == 0
    }
}

impl Container for JsonVal<'_> {
    fn contains(&self, value: &dyn Val) -> Result<bool, ExecutionError> {
        match self.value {
            Value::Array(list) => Ok(list.iter().any(|e| Bound::json(e).as_val().equals(value))),
            Value::Object(map) => match value.downcast_ref::<CelString>() {
                Some(key) => Ok(map.contains_key(key.inner())),
                None if is_key_type(value) => Ok(false),
                None => Err(ExecutionError::UnsupportedKeyType(value.try_into().unwrap_or(cel::Value::Null))),
            },
            _ => Ok(false),
        }
    }
}

/// The keys of the `event` record, in order.
const EVENT_KEYS: [&str; 9] = ["type", "source", "trigger", "time", "id", "preset", "cluster", "severity", "tags"];
/// The keys of the kube-trigger compatible `context` record, in order.
const CONTEXT_KEYS: [&str; 4] = ["sourceType", "event", "data", "timestamp"];

/// The keys of both records as CEL strings, for the comprehensions to iterate over.
static KEY_VALUES: LazyLock<Vec<CelString<'static>>> =
    LazyLock::new(|| EVENT_KEYS.iter().chain(CONTEXT_KEYS.iter()).map(|k| CelString::from(*k)).collect());

/// `event` or `context`, read from the event's metadata on access rather than built as JSON.
#[derive(Debug, Clone)]
pub(crate) enum Record<'a> {
    /// `event`: `{type, source, trigger, time, id, preset?, cluster?, severity?, tags?}`.
    Event {
        /// The event's metadata.
        meta: &'a EventMeta,
        /// The name of the trigger that evaluates it.
        trigger: &'a str,
    },
    /// `context`: `{sourceType, event, data, timestamp}`, `data` being the object.
    Context {
        /// The event's metadata.
        meta: &'a EventMeta,
        /// The object, seen again as `context.data`.
        object: &'a Value,
    },
}

impl<'a> Record<'a> {
    /// The keys this kind of record may have.
    fn keys(&self) -> &'static [&'static str] {
        match self {
            Record::Event { .. } => &EVENT_KEYS,
            Record::Context { .. } => &CONTEXT_KEYS,
        }
    }

    /// The position of the first key of this kind of record in [`KEY_VALUES`].
    fn key_offset(&self) -> usize {
        match self {
            Record::Event { .. } => 0,
            Record::Context { .. } => EVENT_KEYS.len(),
        }
    }

    /// Whether the record has `key`.
    pub(crate) fn has(&self, key: &str) -> bool {
        match (self, key) {
            (Record::Event { meta, .. }, "preset") => meta.preset.is_some(),
            (Record::Event { meta, .. }, "cluster") => meta.cluster.is_some(),
            (Record::Event { meta, .. }, "severity") => meta.severity.is_some(),
            (Record::Event { meta, .. }, "tags") => meta.tags.is_some(),
            _ => self.keys().contains(&key),
        }
    }

    /// The value at `key`, if the record has it.
    pub(crate) fn field(&self, key: &str) -> Option<View<'a>> {
        let s = |s: &'a str| Some(View::Str(Cow::Borrowed(s)));
        match *self {
            Record::Event { meta, trigger } => match key {
                "type" => s(&meta.event_type),
                "source" => s(&meta.source),
                "trigger" => s(trigger),
                "time" => Some(View::Str(Cow::Owned(rfc3339(meta.time)))),
                "id" => s(&meta.id),
                "preset" => meta.preset.as_deref().and_then(s),
                "cluster" => meta.cluster.as_deref().and_then(s),
                "severity" => meta.severity.as_deref().and_then(s),
                "tags" => meta.tags.as_ref().map(View::json),
                _ => None,
            },
            Record::Context { meta, object } => match key {
                "sourceType" => s(&meta.source),
                "event" => s(&meta.event_type),
                "data" => Some(View::json(object)),
                "timestamp" => Some(View::Str(Cow::Owned(rfc3339(meta.time)))),
                _ => None,
            },
        }
    }

    fn len(&self) -> usize {
        self.keys().iter().filter(|k| self.has(k)).count()
    }
}

impl<'a> Val for Record<'a> {
    fn get_type(&self) -> &Type {
        &MAP_TYPE
    }

    fn cel_type() -> &'static Type {
        &MAP_TYPE
    }

    fn as_container(&self) -> Option<&dyn Container> {
        Some(self)
    }

    fn as_indexer<'b, 'v>(&'b self) -> Option<&'b (dyn Indexer + 'v)>
    where
        Self: 'v,
    {
        Some(self)
    }

    fn as_iterable<'b, 'v>(&'b self) -> Option<&'b (dyn Iterable + 'v)>
    where
        Self: 'v,
    {
        Some(self)
    }

    fn as_sizer(&self) -> Option<&dyn Sizer> {
        Some(self)
    }

    fn equals(&self, other: &dyn Val) -> bool {
        other.get_type().kind() == Kind::Map
            && other.as_sizer().is_some_and(|s| *s.size().inner() == self.len() as i64)
            && other.as_indexer().is_some_and(|theirs| {
                self.keys().iter().filter_map(|k| Some((*k, self.field(k)?))).all(|(k, mine)| {
                    theirs.get(&CelString::from(k)).is_ok_and(|t| mine.into_bound().as_val().equals(&*t))
                })
            })
    }

    fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v>
    where
        Self: 'v,
    {
        Box::new(self.clone())
    }
}

impl<'a> Indexer for Record<'a> {
    fn get<'b, 'v>(&'b self, idx: &dyn Val) -> Result<CowVal<'b, 'v>, ExecutionError>
    where
        Self: 'v,
    {
        let Some(key) = idx.downcast_ref::<CelString>() else {
            return Err(ExecutionError::no_such_key(&format!("{idx:?}")));
        };
        match self.field(key.inner()) {
            Some(v) => Ok(CowVal::Owned(v.into_bound().boxed())),
            None => Err(ExecutionError::no_such_key(key.inner())),
        }
    }

    fn steal<'v>(self: Box<Self>, idx: &dyn Val) -> Result<Box<dyn Val + 'v>, ExecutionError>
    where
        Self: 'v,
    {
        self.get(idx).map(CowVal::into_owned)
    }
}

/// Lends out the keys a record has.
struct KeyIter<'b, 'a> {
    record: &'b Record<'a>,
    next: usize,
}

impl<'b, 'v> traits::Iterator<'b, 'v> for KeyIter<'b, '_> {
    fn next(&mut self) -> Option<&'b (dyn Val + 'v)> {
        let keys = self.record.keys();
        while self.next < keys.len() {
            let i = self.next;
            self.next += 1;
            if self.record.has(keys[i]) {
                return Some(&KEY_VALUES[self.record.key_offset() + i]);
            }
        }
        None
    }
}

impl<'a> Iterable for Record<'a> {
    fn iter<'b, 'v>(&'b self) -> Box<dyn traits::Iterator<'b, 'v> + 'b>
    where
        Self: 'v,
    {
        Box::new(KeyIter { record: self, next: 0 })
    }
}

impl Sizer for Record<'_> {
    fn size(&self) -> CelInt {
        (self.len() as i64).into()
    }
}

impl Container for Record<'_> {
    fn contains(&self, value: &dyn Val) -> Result<bool, ExecutionError> {
        Ok(value.downcast_ref::<CelString>().is_some_and(|k| self.has(k.inner())))
    }
}

/// Converts a CEL value, built-in or one of ours, back to JSON.
pub(crate) fn to_json(val: &dyn Val) -> Result<Value, String> {
    let ty = val.get_type();
    let wrong = || format!("cannot convert a value of type {} to JSON", ty.name());
    match ty.kind() {
        Kind::NullType => Ok(Value::Null),
        Kind::Boolean => val.downcast_ref::<CelBool>().map(|b| Value::Bool(*b.inner())).ok_or_else(wrong),
        Kind::Int => val.downcast_ref::<CelInt>().map(|i| Value::from(*i.inner())).ok_or_else(wrong),
        Kind::UInt => val.downcast_ref::<CelUInt>().map(|u| Value::from(*u.inner())).ok_or_else(wrong),
        Kind::Double => {
            let d = *val.downcast_ref::<CelDouble>().ok_or_else(wrong)?.inner();
            serde_json::Number::from_f64(d).map(Value::Number).ok_or_else(|| format!("{d} has no JSON form"))
        }
        Kind::String => val.downcast_ref::<CelString>().map(|s| Value::String(s.inner().to_owned())).ok_or_else(wrong),
        Kind::Bytes => {
            let bytes = val.downcast_ref::<cel::common::types::CelBytes>().ok_or_else(wrong)?;
            String::from_utf8(bytes.inner().to_vec())
                .map(Value::String)
                .map_err(|_| "cannot convert bytes that are not UTF-8 to JSON".to_owned())
        }
        Kind::Timestamp | Kind::Duration | Kind::Type => scalar_string(val).map(Value::String).ok_or_else(wrong),
        Kind::List => {
            let mut out = Vec::new();
            let mut items = val.as_iterable().ok_or_else(wrong)?.iter();
            while let Some(item) = items.next() {
                out.push(to_json(item)?);
            }
            Ok(Value::Array(out))
        }
        Kind::Map => {
            let mut out = serde_json::Map::new();
            let indexer = val.as_indexer().ok_or_else(wrong)?;
            let mut keys = val.as_iterable().ok_or_else(wrong)?.iter();
            while let Some(key) = keys.next() {
                let name = scalar_string(key)
                    .ok_or_else(|| format!("cannot use a {} as a JSON key", key.get_type().name()))?;
                let value = indexer.get(key).map_err(|e| e.to_string())?;
                out.insert(name, to_json(&*value)?);
            }
            Ok(Value::Object(out))
        }
        _ => match val.downcast_ref::<cel::common::types::CelOptional>() {
            Some(optional) => optional.option().map_or(Ok(Value::Null), to_json),
            None => Err(wrong()),
        },
    }
}

/// The text of a scalar: strings as they are, numbers, bools and times formatted; `None` for others.
pub(crate) fn scalar_string(val: &dyn Val) -> Option<String> {
    if let Some(s) = val.downcast_ref::<CelString>() {
        Some(s.inner().to_owned())
    } else if let Some(i) = val.downcast_ref::<CelInt>() {
        Some(i.inner().to_string())
    } else if let Some(u) = val.downcast_ref::<CelUInt>() {
        Some(u.inner().to_string())
    } else if let Some(d) = val.downcast_ref::<CelDouble>() {
        Some(d.inner().to_string())
    } else if let Some(b) = val.downcast_ref::<CelBool>() {
        Some(b.inner().to_string())
    } else if let Some(t) = val.downcast_ref::<CelTimestamp>() {
        Some(t.inner().with_timezone(&Utc).to_rfc3339_opts(SecondsFormat::AutoSi, true))
    } else if let Some(d) = val.downcast_ref::<cel::common::types::CelDuration>() {
        Some(duration_string(d.inner()))
    } else {
        val.downcast_ref::<cel::common::types::CelType>().map(|t| t.name().to_owned())
    }
}

/// A duration the way CEL writes one: seconds with a fraction when needed, e.g. `300s`, `-1.5s`.
fn duration_string(d: &chrono::Duration) -> String {
    let sign = if *d < chrono::Duration::zero() { "-" } else { "" };
    let abs = d.abs();
    let secs = abs.num_seconds();
    let nanos = abs.subsec_nanos();
    if nanos == 0 {
        format!("{sign}{secs}s")
    } else {
        let frac = format!("{nanos:09}");
        format!("{sign}{secs}.{}s", frac.trim_end_matches('0'))
    }
}
