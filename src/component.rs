//! Component identity: every device, bus and sink has a name and a fingerprint of its
//! configuration, so a reload can tell which components to keep (same name, same
//! fingerprint), restart (same name, new fingerprint), start or stop.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Device,
    /// A running source: a Modbus bus (a serial port, a TCP address), an MQTT broker's
    /// subscriptions, ...
    Source,
    Sink,
    /// The agent's own readings (`linetap_agent`).
    Agent,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Device => "device",
            Kind::Source => "source",
            Kind::Sink => "sink",
            Kind::Agent => "agent",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ComponentId {
    pub kind: Kind,
    pub name: String,
    /// A hash of everything in the configuration that shapes the running component.
    pub fingerprint: u64,
}

impl fmt::Display for ComponentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:?} ({:016x})",
            self.kind.as_str(),
            self.name,
            self.fingerprint
        )
    }
}

/// A stable fingerprint of a configuration value: FNV-1a over its `Debug` form (the validated
/// config types print every field, in declaration order).
pub fn fingerprint(value: &impl fmt::Debug) -> u64 {
    struct Fnv(u64);
    impl fmt::Write for Fnv {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            for b in s.bytes() {
                self.0 ^= b as u64;
                self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
            }
            Ok(())
        }
    }
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    let _ = fmt::write(&mut h, format_args!("{value:?}"));
    h.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_follow_content() {
        assert_eq!(fingerprint(&("a", 1)), fingerprint(&("a", 1)));
        assert_ne!(fingerprint(&("a", 1)), fingerprint(&("a", 2)));
    }
}
