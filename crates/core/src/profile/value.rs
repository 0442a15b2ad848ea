//! Scalars with a syntax of their own: quantities, durations, CIDRs,
//! percentages, port ranges, version constraints and secret references.
//!
//! Each is kept as written together with its parse result ([`Checked`]).
//! Deserializing never fails on a malformed value; validation reports it with
//! its location, so one bad value does not hide the next.

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

/// A syntax: how to parse a value and describe it in messages and the schema.
pub trait Syntax: Sized {
    /// What is expected, completing "expected …" in error messages.
    const EXPECTED: &'static str;
    /// Whether a malformed value may be quoted back in messages; not for
    /// secrets, where the malformed value may be the secret itself.
    const ECHO: bool = true;
    fn parse(raw: &str) -> Result<Self, String>;
    /// The JSON Schema of the written form.
    fn schema() -> Schema {
        json_schema!({ "type": "string", "description": Self::EXPECTED })
    }
}

/// A value as written plus the result of parsing it.
#[derive(Clone, PartialEq)]
pub struct Checked<T> {
    raw: String,
    parsed: Result<T, String>,
}

impl<T: Syntax> Checked<T> {
    pub fn new(raw: impl Into<String>) -> Self {
        let raw = raw.into();
        let parsed = T::parse(&raw);
        Checked { raw, parsed }
    }

    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// The parsed value, or `None` when it is malformed (validation has
    /// reported it).
    pub fn get(&self) -> Option<&T> {
        self.parsed.as_ref().ok()
    }

    /// Why the value is malformed, as "expected …, found …".
    pub fn error(&self) -> Option<String> {
        self.parsed.as_ref().err().map(|why| match T::ECHO {
            true => format!("{why}: expected {}, found `{}`", T::EXPECTED, self.raw),
            false => format!("{why}: expected {}", T::EXPECTED),
        })
    }
}

impl<T> fmt::Debug for Checked<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.raw)
    }
}

impl<T> fmt::Display for Checked<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl<T: Syntax> FromStr for Checked<T> {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Checked::new(s))
    }
}

impl<T> Serialize for Checked<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.raw)
    }
}

impl<'de, T: Syntax> Deserialize<'de> for Checked<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Numbers are accepted as their text: `cpu: 2` and `port: 80` are
        // natural to write unquoted.
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = String;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_str<E>(self, v: &str) -> Result<String, E> {
                Ok(v.to_string())
            }
            fn visit_u64<E>(self, v: u64) -> Result<String, E> {
                Ok(v.to_string())
            }
            fn visit_i64<E>(self, v: i64) -> Result<String, E> {
                Ok(v.to_string())
            }
            fn visit_f64<E>(self, v: f64) -> Result<String, E> {
                Ok(v.to_string())
            }
        }
        d.deserialize_str(Text).map(Checked::new)
    }
}

impl<T: Syntax> JsonSchema for Checked<T> {
    fn schema_name() -> Cow<'static, str> {
        Cow::Owned(
            std::any::type_name::<T>()
                .rsplit("::")
                .next()
                .unwrap_or("Value")
                .to_string(),
        )
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        T::schema()
    }
}

/// A Kubernetes resource quantity (`500m`, `2`, `4Gi`, `10G`, `1e3`), as a
/// number of base units (cores or bytes).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Quantity(pub f64);

impl Syntax for Quantity {
    const EXPECTED: &'static str = "a Kubernetes quantity such as `500m`, `2`, `4Gi` or `10G` (suffixes: m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei)";

    fn parse(raw: &str) -> Result<Self, String> {
        let s = raw.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
            .unwrap_or(s.len());
        let (number, suffix) = s.split_at(split);
        if number.is_empty() {
            return Err("no number".into());
        }
        let base: f64 = number.parse().map_err(|_| "malformed number".to_string())?;
        let factor = match suffix {
            "" => 1.0,
            "m" => 1e-3,
            "k" => 1e3,
            "M" => 1e6,
            "G" => 1e9,
            "T" => 1e12,
            "P" => 1e15,
            "E" => 1e18,
            "Ki" => 1024f64,
            "Mi" => 1024f64.powi(2),
            "Gi" => 1024f64.powi(3),
            "Ti" => 1024f64.powi(4),
            "Pi" => 1024f64.powi(5),
            "Ei" => 1024f64.powi(6),
            e if e.starts_with(['e', 'E']) => {
                let exp: i32 = e[1..]
                    .parse()
                    .map_err(|_| format!("unknown suffix `{e}`"))?;
                10f64.powi(exp)
            }
            other => return Err(format!("unknown suffix `{other}`")),
        };
        if base < 0.0 {
            return Err("negative quantity".into());
        }
        Ok(Quantity(base * factor))
    }

    fn schema() -> Schema {
        json_schema!({
            "anyOf": [{ "type": "string" }, { "type": "number", "minimum": 0 }],
            "description": Self::EXPECTED
        })
    }
}

/// A Prometheus-style duration (`15s`, `5m`, `15d`, `1h30m`; units ms, s, m,
/// h, d, w, y), in the exact syntax Prometheus accepts, since these values
/// end up in its configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Duration(pub std::time::Duration);

impl Syntax for Duration {
    const EXPECTED: &'static str =
        "a duration such as `15s`, `5m`, `15d` or `1h30m` (units: ms, s, m, h, d, w, y)";

    fn parse(raw: &str) -> Result<Self, String> {
        let mut rest = raw.trim();
        if rest.is_empty() {
            return Err("empty duration".into());
        }
        let mut total_ms: u128 = 0;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if digits == 0 {
                return Err("each part must start with a whole number".into());
            }
            let n: u128 = rest[..digits]
                .parse()
                .map_err(|_| "number too large".to_string())?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let ms_per = match &rest[..unit_len] {
                "ms" => 1,
                "s" => 1_000,
                "m" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                "w" => 7 * 86_400_000,
                "y" => 365 * 86_400_000,
                "" => return Err("missing unit".into()),
                u => return Err(format!("unknown unit `{u}`")),
            };
            total_ms += n * ms_per;
            rest = &rest[unit_len..];
        }
        let ms = u64::try_from(total_ms).map_err(|_| "duration too large".to_string())?;
        Ok(Duration(std::time::Duration::from_millis(ms)))
    }
}

impl Duration {
    /// Parses a duration written outside a [`Checked`] field.
    pub fn parse_str(raw: &str) -> Result<Self, String> {
        <Self as Syntax>::parse(raw)
    }
}

/// An IP network in CIDR notation with no host bits set (`10.0.1.0/24`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(pub ipnet::IpNet);

impl Syntax for Cidr {
    const EXPECTED: &'static str = "an IP network in CIDR notation such as `10.0.0.0/16`";

    fn parse(raw: &str) -> Result<Self, String> {
        let net: ipnet::IpNet = raw
            .trim()
            .parse()
            .map_err(|_| "malformed CIDR".to_string())?;
        if net.trunc() != net {
            return Err(format!(
                "host bits are set (the network is `{}`)",
                net.trunc()
            ));
        }
        Ok(Cidr(net))
    }
}

/// A percentage from 0 to 100, written `80%` (or `80`).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Percent(pub f64);

impl Syntax for Percent {
    const EXPECTED: &'static str = "a percentage from 0% to 100% such as `80%`";

    fn parse(raw: &str) -> Result<Self, String> {
        let t = raw.trim();
        let n: f64 = t
            .strip_suffix('%')
            .unwrap_or(t)
            .trim()
            .parse()
            .map_err(|_| "malformed percentage".to_string())?;
        if !(0.0..=100.0).contains(&n) {
            return Err("out of range".into());
        }
        Ok(Percent(n))
    }

    fn schema() -> Schema {
        json_schema!({
            "anyOf": [{ "type": "string", "pattern": "^[0-9.]+%?$" }, { "type": "number", "minimum": 0, "maximum": 100 }],
            "description": Self::EXPECTED
        })
    }
}

/// A port, a range `from-to`, or `all`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortRange {
    All,
    Range(u16, u16),
}

impl PortRange {
    pub fn contains_only(&self, allowed: &[u16]) -> bool {
        match self {
            PortRange::All => false,
            PortRange::Range(a, b) => (*a..=*b).all(|p| allowed.contains(&p)),
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortRange::All => f.write_str("all"),
            PortRange::Range(a, b) if a == b => write!(f, "{a}"),
            PortRange::Range(a, b) => write!(f, "{a}-{b}"),
        }
    }
}

impl Syntax for PortRange {
    const EXPECTED: &'static str = "a port from 1 to 65535, a range such as `8000-8100`, or `all`";

    fn parse(raw: &str) -> Result<Self, String> {
        let t = raw.trim();
        if t.eq_ignore_ascii_case("all") {
            return Ok(PortRange::All);
        }
        let port = |s: &str| -> Result<u16, String> {
            match s.trim().parse::<u32>() {
                Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
                Ok(_) => Err("port out of range".into()),
                Err(_) => Err("malformed port".into()),
            }
        };
        match t.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (port(a)?, port(b)?);
                if a > b {
                    return Err("range goes backwards".into());
                }
                Ok(PortRange::Range(a, b))
            }
            None => port(t).map(|p| PortRange::Range(p, p)),
        }
    }

    fn schema() -> Schema {
        json_schema!({
            "anyOf": [{ "type": "integer", "minimum": 1, "maximum": 65535 }, { "type": "string" }],
            "description": Self::EXPECTED
        })
    }
}

/// A Kubernetes version constraint (`>=1.28`, `~1.30`, `1.31`).
#[derive(Debug, Clone, PartialEq)]
pub struct VersionConstraint(pub semver::VersionReq);

impl Syntax for VersionConstraint {
    const EXPECTED: &'static str = "a version constraint such as `>=1.28` or `~1.30`";

    /// A bare version (`1.31`) means exactly that minor version, as
    /// Kubernetes users mean it, not semver's `^1.31`.
    fn parse(raw: &str) -> Result<Self, String> {
        let t = raw.trim();
        let exact;
        let t = if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit() || c == '.') {
            exact = format!("={t}");
            exact.as_str()
        } else {
            t
        };
        semver::VersionReq::parse(t)
            .map(VersionConstraint)
            .map_err(|e| format!("malformed constraint ({e})"))
    }
}

impl VersionConstraint {
    /// The newest of `versions` (major, minor) the constraint admits.
    pub fn newest_of(&self, versions: &[(u64, u64)]) -> Option<(u64, u64)> {
        versions
            .iter()
            .rev()
            .copied()
            .find(|(major, minor)| self.0.matches(&semver::Version::new(*major, *minor, 0)))
    }
}

/// Where a secret's value comes from. The value itself never appears in a
/// profile, plan, journal or log; only this reference does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// `vault:PATH#KEY`: key KEY of the secret at PATH in Vault's KV store
    /// (v2), latest version; `vault:PATH?version=N#KEY` pins version N
    /// (release records pin what they ran, so a rollback restores it).
    Vault {
        path: String,
        key: String,
        version: Option<u64>,
    },
    /// `env:NAME`: read from taskctl's environment at deploy time.
    Env { name: String },
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Vault {
                path,
                key,
                version: None,
            } => write!(f, "vault:{path}#{key}"),
            SecretRef::Vault {
                path,
                key,
                version: Some(v),
            } => write!(f, "vault:{path}?version={v}#{key}"),
            SecretRef::Env { name } => write!(f, "env:{name}"),
        }
    }
}

impl Syntax for SecretRef {
    const ECHO: bool = false;
    const EXPECTED: &'static str = "a secret reference: `vault:PATH#KEY` (for example `vault:secret/database#password`) or `env:NAME`";

    fn parse(raw: &str) -> Result<Self, String> {
        let t = raw.trim();
        if let Some(rest) = t.strip_prefix("vault:") {
            let (path, key) = rest
                .split_once('#')
                .ok_or_else(|| "a vault reference needs `#KEY` after the path".to_string())?;
            let (path, version) = match path.split_once("?version=") {
                Some((path, v)) => (
                    path,
                    Some(v.parse::<u64>().ok().filter(|v| *v > 0).ok_or_else(|| {
                        format!("`?version={v}` must be a KV version number (1, 2, …)")
                    })?),
                ),
                None => (path, None),
            };
            let path = path.trim_matches('/');
            if path.is_empty() || key.is_empty() || key.contains('#') || path.contains('?') {
                return Err("malformed vault reference".into());
            }
            return Ok(SecretRef::Vault {
                path: path.to_string(),
                key: key.to_string(),
                version,
            });
        }
        if let Some(name) = t.strip_prefix("env:") {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err("malformed environment variable name".into());
            }
            return Ok(SecretRef::Env {
                name: name.to_string(),
            });
        }
        Err("a literal value where a secret belongs (write a reference, never the secret)".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(Quantity::parse("500m").unwrap().0, 0.5);
        assert_eq!(Quantity::parse("4Gi").unwrap().0, 4.0 * 1024f64.powi(3));
        assert_eq!(Quantity::parse("1e3").unwrap().0, 1000.0);
        assert!(Quantity::parse("4GB").is_err());
        assert!(Quantity::parse("Gi").is_err());
    }

    #[test]
    fn durations_follow_prometheus() {
        let ms = |s| Duration::parse(s).unwrap().0.as_millis();
        assert_eq!(ms("15s"), 15_000);
        assert_eq!(ms("1h30m"), 5_400_000);
        assert_eq!(ms("15d"), 15 * 86_400_000);
        assert!(Duration::parse("5 minutes").is_err());
        assert!(Duration::parse("5").is_err());
        assert!(Duration::parse("m").is_err());
    }

    #[test]
    fn cidrs_reject_host_bits() {
        assert!(Cidr::parse("10.0.1.0/24").is_ok());
        let err = Cidr::parse("10.0.1.5/24").unwrap_err();
        assert!(err.contains("10.0.1.0/24"), "{err}");
        assert!(Cidr::parse("10.0.300.0/24").is_err());
    }

    #[test]
    fn ports_and_percentages() {
        assert_eq!(PortRange::parse("all").unwrap(), PortRange::All);
        assert_eq!(PortRange::parse("80").unwrap(), PortRange::Range(80, 80));
        assert!(PortRange::parse("70000").is_err());
        assert!(PortRange::parse("90-80").is_err());
        assert_eq!(Percent::parse("80%").unwrap().0, 80.0);
        assert!(Percent::parse("120%").is_err());
    }

    #[test]
    fn secret_references() {
        assert_eq!(
            SecretRef::parse("vault:secret/database#password").unwrap(),
            SecretRef::Vault {
                path: "secret/database".into(),
                key: "password".into(),
                version: None,
            }
        );
        assert!(SecretRef::parse("hunter2").is_err());
        assert!(SecretRef::parse("vault:secret/db").is_err());
        assert_eq!(
            SecretRef::parse("env:PG_PASSWORD").unwrap().to_string(),
            "env:PG_PASSWORD"
        );
        let pinned = SecretRef::parse("vault:secret/messaging?version=3#password").unwrap();
        assert_eq!(
            pinned,
            SecretRef::Vault {
                path: "secret/messaging".into(),
                key: "password".into(),
                version: Some(3),
            }
        );
        assert_eq!(
            pinned.to_string(),
            "vault:secret/messaging?version=3#password"
        );
        assert!(SecretRef::parse("vault:secret/messaging?version=0#password").is_err());
        assert!(SecretRef::parse("vault:secret/messaging?version=x#password").is_err());
    }
}
