//! A table of the file as the TOML parser gave it, with the location of every key and value,
//! whose keys are taken by the code that knows them: the keys every device (or point, or
//! sink) shares by shared code, the rest by the kind's own struct in its folder. Each part is
//! deserialized with `serde` from the spanned tree (no text is parsed twice), so its errors
//! keep their line and column.

use super::validate::Ctx;
use serde::de::{Deserialize, Deserializer, Visitor};
use serde_spanned::Spanned;
use std::any::Any;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use toml::de::{DeTable, DeValue, ValueDeserializer};

/// One table (`[[devices]]`, `[[devices.points]]`, `[sinks.NAME]`) and its location.
pub struct RawTable<'i> {
    span: Range<usize>,
    entries: DeTable<'i>,
    /// The keys read so far by `take` (an unknown key's message lists them too).
    known: Vec<&'static str>,
}

impl<'i> RawTable<'i> {
    /// The value at `v` as a table, or where it is not one.
    pub fn of(v: Spanned<DeValue<'i>>, what: &str) -> Result<RawTable<'i>, (Range<usize>, String)> {
        let span = v.span();
        match v.into_inner() {
            DeValue::Table(entries) => Ok(RawTable {
                span,
                entries,
                known: Vec::new(),
            }),
            other => Err((
                span,
                format!("{what} must be a table, not a {}", other.type_str()),
            )),
        }
    }

    pub fn new(span: Range<usize>, entries: DeTable<'i>) -> RawTable<'i> {
        RawTable {
            span,
            entries,
            known: Vec::new(),
        }
    }

    /// Where the table is written.
    pub fn span(&self) -> Range<usize> {
        self.span.clone()
    }

    /// A string key's value and location, left in place (to choose a kind by it).
    pub fn peek_str(&self, key: &str) -> Option<(&str, Range<usize>)> {
        self.entries
            .iter()
            .find(|(k, _)| k.get_ref() == key)
            .map(|(_, v)| (v.get_ref().as_str().unwrap_or(""), v.span()))
    }

    /// Takes an array of tables out (`[[points]]`); a value that is not an array is handed on
    /// as its only element, so that reading it says what it should be.
    pub fn take_array(&mut self, key: &'static str) -> Vec<Spanned<DeValue<'i>>> {
        self.known.push(key);
        let Some(v) = self.remove(key) else {
            return Vec::new();
        };
        let span = v.span();
        match v.into_inner() {
            DeValue::Array(a) => a.into_iter().collect(),
            other => vec![Spanned::new(span, other)],
        }
    }

    /// Adds every key of `base` this table does not have, located at this table's `name`
    /// (errors about the combination then point where the table is written).
    pub fn inherit(&mut self, base: RawTable<'i>) {
        let at = self
            .peek_str("name")
            .map(|(_, at)| at)
            .unwrap_or(self.span.clone());
        for (k, v) in base.entries {
            if !self.has(k.get_ref()) {
                self.entries.insert(
                    Spanned::new(at.clone(), k.into_inner()),
                    Spanned::new(at.clone(), v.into_inner()),
                );
            }
        }
    }

    /// Takes out every key that is not `ours` but another kind's (`whose` says so, as the
    /// error at its value), so that the kind's own struct only sees keys it may know.
    pub fn take_foreign(
        &mut self,
        cx: &mut Ctx,
        ours: impl Fn(&str) -> bool,
        whose: impl Fn(&str) -> Option<String>,
    ) {
        let mut foreign = Vec::new();
        for (key, at) in self.keys() {
            if ours(key) {
                continue;
            }
            if let Some(message) = whose(key) {
                cx.err(at, message);
                foreign.push(key.to_string());
            }
        }
        for key in foreign {
            self.remove(&key);
        }
    }

    /// Whether the key is (still) in the table.
    pub fn has(&self, key: &str) -> bool {
        self.entries.iter().any(|(k, _)| k.get_ref() == key)
    }

    /// Takes a key out (the caller has dealt with it).
    pub fn remove(&mut self, key: &str) -> Option<Spanned<DeValue<'i>>> {
        let k = self
            .entries
            .iter()
            .find(|(k, _)| k.get_ref() == key)
            .map(|(k, _)| k.clone())?;
        self.entries.remove(&k)
    }

    /// The keys left, each with where its value is written (errors point at values).
    pub fn keys(&self) -> impl Iterator<Item = (&str, Range<usize>)> {
        self.entries
            .iter()
            .map(|(k, v)| (k.get_ref().as_ref(), v.span()))
    }

    /// Takes the keys `T` declares out of the table and reads them as `T`; unknown keys stay
    /// for the next part. An error is recorded at its location (then `None`).
    pub fn take<T: Deserialize<'i>>(&mut self, cx: &mut Ctx) -> Option<T> {
        let fields = fields_of::<T>();
        let mut taken = DeTable::new();
        let keys: Vec<_> = self
            .entries
            .iter()
            .filter(|(k, _)| fields.contains(&k.get_ref().as_ref()))
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            if let Some((k, v)) = self.entries.remove_entry(&k) {
                taken.insert(k, v);
            }
        }
        self.known.extend(fields);
        read(cx, self.span.clone(), taken, &[])
    }

    /// Reads every key left as `T` (which denies the keys it does not know: the message lists
    /// every key this table may have, those read before too).
    pub fn finish<T: Deserialize<'i>>(self, cx: &mut Ctx) -> Option<T> {
        read(cx, self.span, self.entries, &self.known)
    }
}

fn read<'i, T: Deserialize<'i>>(
    cx: &mut Ctx,
    span: Range<usize>,
    t: DeTable<'i>,
    known: &[&'static str],
) -> Option<T> {
    let de = ValueDeserializer::from(Spanned::new(span.clone(), DeValue::Table(t)));
    match T::deserialize(de) {
        Ok(v) => Some(v),
        Err(e) => {
            let mut message = e.message().trim().to_string();
            if !known.is_empty() && message.starts_with("unknown field") {
                let mut all: Vec<&str> = known.to_vec();
                all.extend(fields_of::<T>());
                if let Some(i) = message.find(", expected") {
                    message.truncate(i);
                }
                let list: Vec<String> = all.iter().map(|k| format!("`{k}`")).collect();
                message.push_str(&format!(", expected one of {}", list.join(", ")));
            }
            cx.shape(e.span().unwrap_or(span), message);
            None
        }
    }
}

/// The field names a derived `Deserialize` struct declares.
pub fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    struct Catch(&'static [&'static str]);
    #[derive(Debug)]
    struct Stop;
    impl fmt::Display for Stop {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("fields read")
        }
    }
    impl std::error::Error for Stop {}
    impl serde::de::Error for Stop {
        fn custom<M: fmt::Display>(_: M) -> Self {
            Stop
        }
    }
    impl<'de> Deserializer<'de> for &mut Catch {
        type Error = Stop;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            self.0 = fields;
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    let mut c = Catch(&[]);
    let _ = T::deserialize(&mut c);
    c.0
}

/// A kind's own part of a device's, point's or sink's validated configuration: defined in the
/// kind's folder, opaque to the rest. Its `Debug` form enters the component's fingerprint.
#[derive(Clone)]
pub struct Settings(Arc<dyn KindSettings>);

pub trait KindSettings: Any + Send + Sync + fmt::Debug {}
impl<T: Any + Send + Sync + fmt::Debug> KindSettings for T {}

impl Settings {
    pub fn new<T: KindSettings>(v: T) -> Settings {
        Settings(Arc::new(v))
    }
    /// The settings as the kind that made them, or `None` for another kind's.
    pub fn get<T: Any>(&self) -> Option<&T> {
        let any: &dyn Any = &*self.0;
        any.downcast_ref()
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Two {
        a: Option<i64>,
        #[serde(rename = "type")]
        b: Option<String>,
    }

    #[test]
    fn reads_the_fields_a_struct_declares() {
        assert_eq!(fields_of::<Two>(), &["a", "type"]);
    }

    #[test]
    fn settings_are_what_their_kind_made() {
        let s = Settings::new(7u32);
        assert_eq!(s.get::<u32>(), Some(&7));
        assert_eq!(s.get::<u64>(), None);
        assert_eq!(format!("{s:?}"), "7");
    }
}
