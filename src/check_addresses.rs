//! Addresses that look like Modbus reference numbers. Vendor manuals often list registers by
//! their reference number (`40011`, or `400011` with six digits: the table's digit, then the
//! 1-based register number), while a linetap `address` is the 0-based address on the wire:
//! holding register 40011 is `address = 10` on the holding table. A valid address in those
//! ranges is possible (some devices do map registers there), so `check` warns and does not
//! refuse; a six-digit number is beyond 65535 and is an error whose message carries the hint.

use crate::config::{Config, Table};

/// What a reference number stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reference {
    /// 5 (`4xxxx`) or 6 (`4xxxxx`).
    pub digits: u8,
    pub table: Table,
    /// The 0-based address it stands for.
    pub address: u32,
}

impl Reference {
    /// `4xxxx` / `3xxxxx`.
    pub fn pattern(&self) -> String {
        let first = if self.table == Table::Holding {
            '4'
        } else {
            '3'
        };
        let mut p = first.to_string();
        for _ in 1..self.digits {
            p.push('x');
        }
        p
    }
}

/// The register `n` stands for when it is a register reference number: 30001–39999 and
/// 300001–365536 (input registers), 40001–49999 and 400001–465536 (holding registers).
pub fn reference(n: u32) -> Option<Reference> {
    let (digits, table, address) = match n {
        30001..=39999 => (5, Table::Input, n - 30001),
        40001..=49999 => (5, Table::Holding, n - 40001),
        300001..=365536 => (6, Table::Input, n - 300001),
        400001..=465536 => (6, Table::Holding, n - 400001),
        _ => return None,
    };
    Some(Reference {
        digits,
        table,
        address,
    })
}

/// For an address out of the 0..=65535 range: what it likely means, when it is a six-digit
/// reference number (`looks like a 4xxxxx reference number: holding register 10 is table =
/// "holding", address = 10`).
pub fn reference_hint(n: u32) -> Option<String> {
    let r = reference(n).filter(|r| r.digits == 6)?;
    Some(format!(
        "{n} looks like a {} reference number: {} register {} is table = {:?}, address = {}",
        r.pattern(),
        r.table.as_str(),
        r.address,
        r.table.as_str(),
        r.address
    ))
}

/// The warning for a register point at `address` on `table`, when the address looks like a
/// reference number (`None` for ordinary addresses such as 1011, and for the bit tables).
pub fn address_warning(table: Table, address: u32) -> Option<String> {
    if !matches!(table, Table::Holding | Table::Input) {
        return None;
    }
    let r = reference(address)?;
    let fix = if r.table == table {
        format!("address = {}", r.address)
    } else {
        format!("table = {:?}, address = {}", r.table.as_str(), r.address)
    };
    Some(format!(
        "address = {address} on the {} table looks like a {} reference number: {} register {} is {fix} (if the device's manual gives {address} as the 0-based address, ignore this)",
        table.as_str(),
        r.pattern(),
        r.table.as_str(),
        r.address,
    ))
}

/// `check`'s warnings for the Modbus register points of `config` whose address looks like a
/// reference number.
pub fn warnings(config: &Config) -> Vec<String> {
    let mut w = Vec::new();
    for (d, _) in crate::source::modbus::devices(config) {
        for p in d.points.iter().filter(|p| p.is_read()) {
            let r = crate::source::modbus::config::reg(p);
            if let Some(text) = address_warning(r.table, r.address as u32) {
                w.push(format!("device {:?} point {:?}: {text}", d.id, p.name));
            }
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_numbers_and_ordinary_addresses() {
        let cases: &[(Table, u32, Option<&str>)] = &[
            (
                Table::Holding,
                40011,
                Some("address = 40011 on the holding table looks like a 4xxxx reference number: holding register 10 is address = 10"),
            ),
            (
                Table::Holding,
                40001,
                Some("looks like a 4xxxx reference number: holding register 0 is address = 0"),
            ),
            (
                Table::Input,
                30005,
                Some("address = 30005 on the input table looks like a 3xxxx reference number: input register 4 is address = 4"),
            ),
            (
                Table::Input,
                40011,
                Some("holding register 10 is table = \"holding\", address = 10"),
            ),
            (
                Table::Holding,
                30005,
                Some("input register 4 is table = \"input\", address = 4"),
            ),
            (Table::Holding, 1011, None),
            (Table::Holding, 40000, None),
            (Table::Holding, 50000, None),
            (Table::Input, 29999, None),
            (Table::Coil, 40011, None),
            (Table::Discrete, 10001, None),
        ];
        for (table, address, want) in cases {
            let got = address_warning(*table, *address);
            match (want, &got) {
                (None, None) => {}
                (Some(w), Some(g)) => assert!(g.contains(w), "{table:?} {address}: {g}"),
                _ => panic!("{table:?} {address}: {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn six_digit_references_name_their_register() {
        assert_eq!(
            reference_hint(400011).as_deref(),
            Some("400011 looks like a 4xxxxx reference number: holding register 10 is table = \"holding\", address = 10")
        );
        assert_eq!(
            reference_hint(300005).as_deref(),
            Some("300005 looks like a 3xxxxx reference number: input register 4 is table = \"input\", address = 4")
        );
        assert_eq!(reference_hint(465537), None);
        assert_eq!(reference_hint(70000), None);
        // Five digits fit a u16 and are warnings, not this error hint.
        assert_eq!(reference_hint(40011), None);
    }

    #[test]
    fn check_warns_for_the_points_of_a_config() {
        let cfg = crate::config::parse(
            "t.toml",
            r#"
[line]
id = "l"
[[devices]]
id = "d"
address = "127.0.0.1:502"
[[devices.points]]
name = "speed"
address = 40011
[[devices.points]]
name = "temp"
table = "input"
address = 30005
[[devices.points]]
name = "fine"
address = 1011
"#,
        )
        .map_err(|e| e.to_string())
        .unwrap();
        let w = warnings(&cfg);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].starts_with("device \"d\" point \"speed\": address = 40011"),
            "{w:?}"
        );
        assert!(
            w[1].starts_with("device \"d\" point \"temp\": address = 30005"),
            "{w:?}"
        );
    }
}
