//! Reading a [`Config<D>`]: the shared sections are taken out of the top-level table as its keys
//! go by, every other key goes to the daemon's own part `D`.
//!
//! `#[serde(flatten)]` would do this, but it buffers the document, which loses the positions
//! of errors inside `D` and turns off `deny_unknown_fields`. Here the keys stay in the TOML
//! deserializer's hands, so an unknown key is refused with its line and column, whichever part
//! it was meant for.

use std::marker::PhantomData;

use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::{Config, DaemonConfig, LimitsConfig, ListenConfig, LogConfig, TlsConfig};

/// The top-level keys the runtime owns.
const SHARED: [&str; 4] = ["listen", "tls", "limits", "log"];

#[derive(Default)]
struct SharedSections {
    listen: Option<ListenConfig>,
    tls: Option<TlsConfig>,
    limits: Option<LimitsConfig>,
    log: Option<LogConfig>,
}

impl<'de, D: DaemonConfig> Deserialize<'de> for Config<D> {
    fn deserialize<De: Deserializer<'de>>(deserializer: De) -> Result<Self, De::Error> {
        deserializer.deserialize_map(ConfigVisitor(PhantomData))
    }
}

struct ConfigVisitor<D>(PhantomData<D>);

impl<'de, D: DaemonConfig> Visitor<'de> for ConfigVisitor<D> {
    type Value = Config<D>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a table of config sections")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Config<D>, A::Error> {
        let mut shared = SharedSections::default();
        let daemon = D::deserialize(DaemonPart {
            map,
            shared: &mut shared,
        })?;
        let listen_is_default = shared.listen.is_none();
        let mut limits = shared.limits.unwrap_or_default();
        limits.idle_timeout.get_or_insert(D::IDLE_TIMEOUT);
        Ok(Config {
            listen: shared.listen.unwrap_or_else(super::default_listen::<D>),
            listen_is_default,
            tls: shared.tls.unwrap_or_default(),
            limits,
            log: shared.log.unwrap_or_default(),
            daemon,
        })
    }
}

/// The top-level table as the daemon's part sees it: without the shared sections.
struct DaemonPart<'s, A> {
    map: A,
    shared: &'s mut SharedSections,
}

impl<'de, A: MapAccess<'de>> Deserializer<'de> for DaemonPart<'_, A> {
    type Error = A::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, A::Error> {
        visitor.visit_map(Routed {
            map: self.map,
            shared: self.shared,
            fields: None,
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        visitor.visit_map(Routed {
            map: self.map,
            shared: self.shared,
            fields: Some(fields),
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

struct Routed<'s, A> {
    map: A,
    shared: &'s mut SharedSections,
    /// The daemon part's keys, when it said (a struct does).
    fields: Option<&'static [&'static str]>,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Routed<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        let mut seed = seed;
        loop {
            let key = self.map.next_key_seed(KeySeed {
                seed,
                fields: self.fields,
            })?;
            match key {
                None => return Ok(None),
                Some(Key::Daemon(value)) => return Ok(Some(value)),
                Some(Key::Shared(section, back)) => {
                    seed = back;
                    let shared = &mut *self.shared;
                    match section {
                        Section::Listen => shared.listen = Some(self.map.next_value()?),
                        Section::Tls => shared.tls = Some(self.map.next_value()?),
                        Section::Limits => shared.limits = Some(self.map.next_value()?),
                        Section::Log => shared.log = Some(self.map.next_value()?),
                    }
                }
            }
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(seed)
    }
}

enum Section {
    Listen,
    Tls,
    Limits,
    Log,
}

/// A top-level key: a shared section (with the daemon's seed handed back), or the daemon's.
enum Key<K, V> {
    Shared(Section, K),
    Daemon(V),
}

/// Reads a top-level key and routes it. It runs inside the TOML deserializer's own key
/// handling, so an error here gets the key's position.
struct KeySeed<K> {
    seed: K,
    fields: Option<&'static [&'static str]>,
}

impl<'de, K: DeserializeSeed<'de>> DeserializeSeed<'de> for KeySeed<K> {
    type Value = Key<K, K::Value>;

    fn deserialize<De: Deserializer<'de>>(
        self,
        deserializer: De,
    ) -> Result<Self::Value, De::Error> {
        let key = String::deserialize(deserializer)?;
        let section = match key.as_str() {
            "listen" => Section::Listen,
            "tls" => Section::Tls,
            "limits" => Section::Limits,
            "log" => Section::Log,
            _ => {
                if let Some(fields) = self.fields.filter(|f| !f.contains(&key.as_str())) {
                    let expected: Vec<String> = SHARED
                        .iter()
                        .chain(fields)
                        .map(|f| format!("`{f}`"))
                        .collect();
                    return Err(de::Error::custom(format_args!(
                        "unknown section or key `{key}`, expected one of {}",
                        expected.join(", ")
                    )));
                }
                let key: de::value::StringDeserializer<De::Error> = key.into_deserializer();
                return self.seed.deserialize(key).map(Key::Daemon);
            }
        };
        Ok(Key::Shared(section, self.seed))
    }
}
