//! `BROKER_URL`: its credentials put in, and hidden wherever it is shown.

use std::{fmt, fmt::Write as _};

/// The broker URL; its `Debug`/`Display` hide the password because the URL
/// usually carries credentials and ends up in logs otherwise.
#[derive(Clone)]
pub struct BrokerUrl(pub(super) String);

impl BrokerUrl {
    /// The full URL, credentials included; pass it to the client only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub(super) fn redacted(&self) -> String {
        // amqp://user:pass@host -> amqp://user:***@host
        match split_url(&self.0) {
            Some(UrlParts {
                prefix,
                userinfo: Some(userinfo),
                rest,
            }) => {
                let user = userinfo.split(':').next().unwrap_or("");
                format!("{prefix}{user}:***@{rest}")
            }
            _ => self.0.clone(),
        }
    }
}

/// `scheme://[userinfo@]host…` cut around the userinfo.
pub(super) struct UrlParts<'a> {
    /// `scheme://`
    prefix: &'a str,
    /// Between `://` and the last `@` of the authority, still percent-encoded.
    userinfo: Option<&'a str>,
    /// From the host on.
    rest: &'a str,
}

pub(super) fn split_url(url: &str) -> Option<UrlParts<'_>> {
    let scheme_end = url.find("://")? + 3;
    let (prefix, after) = url.split_at(scheme_end);
    // The authority ends at the path, query or fragment; userinfo cannot
    // contain those characters unencoded, so its last `@` ends the userinfo.
    let authority_end = after.find(['/', '?', '#']).unwrap_or(after.len());
    Some(match after[..authority_end].rfind('@') {
        Some(at) => UrlParts {
            prefix,
            userinfo: Some(&after[..at]),
            rest: &after[at + 1..],
        },
        None => UrlParts {
            prefix,
            userinfo: None,
            rest: after,
        },
    })
}

/// Percent-encodes everything but RFC 3986 unreserved characters, so any
/// user name or password is safe in the userinfo of a URL.
pub(super) fn encode_userinfo(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// `url` with `username` and `password` (plain text, encoded here) replacing
/// the matching part of its userinfo; a part not given keeps the URL's.
/// A password needs a user name, from `BROKER_USERNAME` or the URL.
pub(super) fn with_credentials(
    url: &str,
    username: Option<&str>,
    password: Option<&str>,
) -> Result<String, String> {
    if username.is_none() && password.is_none() {
        return Ok(url.to_owned());
    }
    let Some(parts) = split_url(url) else {
        return Ok(url.to_owned());
    };
    let (url_user, url_password) = match parts.userinfo {
        Some(info) => match info.split_once(':') {
            Some((user, password)) => (user, Some(password)),
            None => (info, None),
        },
        None => ("", None),
    };
    let user = username.map_or_else(|| url_user.to_owned(), encode_userinfo);
    if user.is_empty() && password.is_some() {
        return Err(
            "expected a user name to go with the password: set BROKER_USERNAME \
             (or BROKER_USERNAME_FILE) or put the user in BROKER_URL, \
             e.g. amqp://user@rabbitmq:5672/%2f"
                .to_owned(),
        );
    }
    let password = password.map_or_else(
        || url_password.map(str::to_owned),
        |p| Some(encode_userinfo(p)),
    );
    let mut out = format!("{}{user}", parts.prefix);
    if let Some(password) = password {
        out.push(':');
        out.push_str(&password);
    }
    out.push('@');
    out.push_str(parts.rest);
    Ok(out)
}

impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}
