//! Kubernetes' own naming rules (apimachinery's validation): every name a
//! profile gives reaches a manifest, so each is checked here, with its
//! location, before any template sees it.

/// `Ok` when `ok`, else the value (control characters escaped, so a
/// newline shows as `\n` on one line) and what was expected.
fn rule(ok: bool, s: &str, expected: &str) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(format!("`{}` {expected}", s.escape_debug()))
    }
}

/// Lowercase letters, digits and `-`, not starting or ending with `-`.
fn lower_alnum_dashes(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Letters, digits, `-`, `_` and `.`.
fn key_chars(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

/// A DNS-1123 label: 1 to 63 lowercase letters, digits and `-`, starting
/// and ending with a letter or digit (namespaces, most object names).
pub fn dns_label(s: &str) -> Result<(), String> {
    rule(
        !s.is_empty() && s.len() <= 63 && lower_alnum_dashes(s),
        s,
        "is not a DNS-1123 label: expected 1 to 63 lowercase letters, digits and `-`, starting and ending with a letter or digit",
    )
}

/// A DNS-1035 label: a DNS-1123 label that starts with a letter (Service
/// names).
pub fn dns1035_label(s: &str) -> Result<(), String> {
    dns_label(s)?;
    rule(
        s.starts_with(|c: char| c.is_ascii_lowercase()),
        s,
        "is not a DNS-1035 label: it must start with a lowercase letter",
    )
}

/// A DNS-1123 subdomain: dot-separated DNS-1123 labels, 253 characters at
/// most (ConfigMap names).
pub fn dns_subdomain(s: &str) -> Result<(), String> {
    rule(
        !s.is_empty() && s.len() <= 253 && s.split('.').all(|l| dns_label(l).is_ok()),
        s,
        "is not a DNS-1123 subdomain: expected dot-separated lowercase labels of letters, digits and `-`, 253 characters at most",
    )
}

/// An environment variable name as Kubernetes accepts it:
/// `[-._a-zA-Z][-._a-zA-Z0-9]*`.
pub fn env_name(s: &str) -> Result<(), String> {
    rule(
        s.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b"-._".contains(&b))
            && key_chars(s),
        s,
        "is not an environment variable name: expected letters, digits, `_`, `-` and `.`, not starting with a digit",
    )
}

/// A ConfigMap key: `[-._a-zA-Z0-9]+`, 253 characters at most.
pub fn config_key(s: &str) -> Result<(), String> {
    rule(
        !s.is_empty() && s.len() <= 253 && key_chars(s),
        s,
        "is not a ConfigMap key: expected letters, digits, `-`, `_` and `.`",
    )
}

/// A port name (IANA service name): 1 to 15 lowercase letters, digits and
/// `-`, at least one letter, no `--`, not starting or ending with `-`.
pub fn port_name(s: &str) -> Result<(), String> {
    rule(
        !s.is_empty()
            && s.len() <= 15
            && lower_alnum_dashes(s)
            && s.bytes().any(|b| b.is_ascii_lowercase())
            && !s.contains("--"),
        s,
        "is not a port name: expected 1 to 15 lowercase letters, digits and `-`, with at least one letter",
    )
}

/// A host: a DNS name (labels of letters, digits and `-`; `*` allowed for
/// wildcard certificates) or an IP address.
pub fn host(s: &str) -> Result<(), String> {
    let dns = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '*')
        });
    rule(
        dns || s.parse::<std::net::IpAddr>().is_ok(),
        s,
        "is neither a DNS name nor an IP address",
    )
}

/// An image registry as Docker names one: a host (see [`host`]), an
/// optional `:port` and an optional path, no scheme
/// (`registry.example.com:5000/team`).
pub fn registry(s: &str) -> Result<(), String> {
    let (address, path) = match s.split_once('/') {
        Some((address, path)) => (address, Some(path)),
        None => (s, None),
    };
    let (name, port) = match address.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (address, None),
    };
    let path_ok = path.is_none_or(|path| {
        path.split('/').all(|c| {
            !c.is_empty()
                && c.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
        })
    });
    rule(
        host(name).is_ok()
            && !name.contains('*')
            && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0))
            && path_ok,
        s,
        "is not a registry (expected HOST[:PORT][/PATH] with no scheme, e.g. 127.0.0.1:5000)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_kubernetes_rules() {
        assert!(dns_label("task-executor").is_ok());
        for bad in ["a: b", "x\ny: z", "", "-a", "A", &"a".repeat(64)] {
            assert!(dns_label(bad).is_err(), "{bad:?}");
        }
        assert!(dns_label("x\ny").unwrap_err().contains(r"`x\ny`"));
        assert!(dns1035_label("1abc").is_err() && dns1035_label("abc-1").is_ok());
        assert!(dns_subdomain("agent-config.v1").is_ok() && dns_subdomain("a..b").is_err());
        assert!(env_name("BROKER_URL").is_ok() && env_name("1X").is_err());
        assert!(env_name("A B").is_err() && env_name("A:").is_err());
        for good in [
            "127.0.0.1:5000",
            "registry.example.com",
            "reg.example.com:443/team/x",
        ] {
            assert!(registry(good).is_ok(), "{good}");
        }
        for bad in [
            "http://127.0.0.1:5000",
            "host:0",
            "host:x",
            "a b",
            "reg/Team",
            "reg/",
            "*.example.com",
        ] {
            assert!(registry(bad).is_err(), "{bad}");
        }
        assert!(config_key("broker_url").is_ok() && config_key("a/b").is_err());
        assert!(port_name("http").is_ok() && port_name("8080").is_err());
        assert!(port_name("a-very-long-port-name").is_err());
        assert!(host("127.0.0.1").is_ok() && host("es.logging.svc").is_ok());
        assert!(host("es\n  evil: x").is_err() && host("a b").is_err());
    }
}
