//! Functions that charge the evaluation's budget ([`limits::charge`]) before they do work that
//! could outgrow it. Compiled expressions call them in place of loops and of the functions
//! whose result can be much larger than their input (see the `Rewriter` in `cel.rs`).

use cel::ExecutionError;
use cel::common::types::{CelInt, CelList, CelString};
use cel::common::value::{CowVal, Val};

use super::limits;

/// Wraps the range of every loop: `@loop(range, body)` charges the range's size times the cost
/// of one pass through the body, then hands the range on unchanged.
pub const LOOP: &str = "@loop";
/// `lists.range(n)`: charges `n` before building the list.
pub const LISTS_RANGE: &str = "@lists_range";
/// `s.replace(old, new[, n])`: charges what the result will hold.
pub const REPLACE: &str = "@replace";
/// `list.distinct()`: charges the square of the list's size (every pair may be compared).
pub const DISTINCT: &str = "@distinct";
/// `a + b`: charges the size of a concatenated string, bytes or list.
pub const ADD: &str = "@add";

/// The size of a list, map, string or bytes value; 1 for anything else.
fn size_of(val: &dyn Val) -> u64 {
    if let Some(s) = val.downcast_ref::<CelString>() {
        return s.inner().len() as u64;
    }
    if let Some(b) = val.downcast_ref::<cel::common::types::CelBytes>() {
        return b.inner().len() as u64;
    }
    val.as_sizer().map_or(1, |s| u64::try_from(*s.size().inner()).unwrap_or(0))
}

/// `@loop(range, body)`.
pub fn charge_loop<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let count = args.len();
    let mut args = args.into_iter();
    let (Some(range), Some(body), None) = (args.next(), args.next(), args.next()) else {
        return Err(ExecutionError::invalid_argument_count(2, count));
    };
    let body = body.downcast_ref::<CelInt>().map_or(1, |b| u64::try_from(*b.inner()).unwrap_or(1));
    let items = range.as_sizer().map_or(0, |s| u64::try_from(*s.size().inner()).unwrap_or(0));
    charge_iterations(items, body)?;
    Ok(range)
}

/// What a loop of `items` passes through a body costing `body` charges before it starts.
pub fn charge_iterations(items: u64, body: u64) -> Result<(), ExecutionError> {
    limits::charge(items.saturating_mul(body).saturating_add(1))
}

/// What `+` charges for a string, bytes or list of `lhs` and `rhs` elements.
pub fn charge_concat(lhs: u64, rhs: u64) -> Result<(), ExecutionError> {
    limits::charge_bytes(usize::try_from(lhs.saturating_add(rhs)).unwrap_or(usize::MAX))
}

/// `@lists_range(n)`: `[0, 1, ..., n - 1]`.
pub fn lists_range<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let [n] = args.as_slice() else { return Err(ExecutionError::invalid_argument_count(1, args.len())) };
    let Some(n) = n.downcast_ref::<CelInt>().map(|n| *n.inner()) else {
        return Err(ExecutionError::no_such_overload("lists.range", vec![n.get_type().name().to_owned()]));
    };
    if n < 0 {
        return Err(ExecutionError::function_error("lists.range", format!("negative size {n}")));
    }
    limits::charge(u64::try_from(n).unwrap_or(u64::MAX))?;
    let items: Vec<Box<dyn Val + 'v>> = (0..n).map(|i| Box::new(CelInt::from(i)) as Box<dyn Val + 'v>).collect();
    Ok(CowVal::owned(CelList::from(items)))
}

/// `@replace(text, old, new[, n])`: at most `n` replacements when `n` is not negative.
pub fn replace<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let strings: Vec<Option<&str>> =
        args.iter().take(3).map(|a| a.downcast_ref::<CelString>().map(|s| s.inner())).collect();
    let limit = match args.get(3) {
        None => Some(None),
        Some(n) => n.downcast_ref::<CelInt>().map(|n| usize::try_from(*n.inner()).ok()),
    };
    let (&[Some(text), Some(old), Some(new)], Some(limit)) = (strings.as_slice(), limit) else {
        let types = args.iter().map(|a| a.get_type().name().to_owned()).collect();
        return Err(ExecutionError::no_such_member_overload("replace", types));
    };
    let found = text.matches(old).count();
    let replaced = limit.map_or(found, |n| n.min(found));
    let produced = text
        .len()
        .saturating_sub(replaced.saturating_mul(old.len()))
        .saturating_add(replaced.saturating_mul(new.len()));
    limits::charge_bytes(produced)?;
    let result = match limit {
        None => text.replace(old, new),
        Some(n) => text.replacen(old, new, n),
    };
    Ok(CowVal::owned(CelString::from(result)))
}

/// `@distinct(list)`: the first of every group of equal elements, in order.
pub fn distinct<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let [list] = args.as_slice() else { return Err(ExecutionError::invalid_argument_count(1, args.len())) };
    let Some(iterable) = list.as_iterable() else {
        return Err(ExecutionError::no_such_member_overload("distinct", vec![list.get_type().name().to_owned()]));
    };
    let size = size_of(list.as_ref());
    limits::charge(size.saturating_mul(size))?;
    let mut items = iterable.iter();
    let mut unique: Vec<&dyn Val> = Vec::new();
    while let Some(item) = items.next() {
        if !unique.iter().any(|seen| item.equals(*seen)) {
            unique.push(item);
        }
    }
    let owned: Vec<Box<dyn Val + 'v>> = unique.into_iter().map(|item| item.clone_as_boxed()).collect();
    Ok(CowVal::owned(CelList::from(owned)))
}

/// `@add(a, b)`: what `a + b` is, after charging for a string, bytes or list it builds.
pub fn add<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let [lhs, rhs] = args.as_slice() else { return Err(ExecutionError::invalid_argument_count(2, args.len())) };
    if lhs.as_sizer().is_some() || lhs.downcast_ref::<CelString>().is_some() {
        charge_concat(size_of(lhs.as_ref()), size_of(rhs.as_ref()))?;
    }
    let Some(adder) = lhs.as_adder() else {
        return Err(ExecutionError::UnsupportedBinaryOperator(
            "add",
            cel::Value::try_from(lhs.as_ref()).unwrap_or(cel::Value::Null),
            cel::Value::try_from(rhs.as_ref()).unwrap_or(cel::Value::Null),
        ));
    };
    Ok(CowVal::Owned(adder.add(rhs.as_ref())?.into_owned()))
}
