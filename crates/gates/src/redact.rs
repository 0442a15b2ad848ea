//! Keeping credentials out of everything a gate says.
//!
//! The broker URL usually carries a user and password (`amqp://user:pass@…`),
//! and Prometheus or an agent may sit behind basic auth. Every string a gate
//! reports (observed values, summaries, `Debug`) goes through [`url()`] for the
//! addresses it shows and [`scrub`] for text that came from a client library,
//! whose error messages may quote the address it was given.

/// `url` with its user and password replaced by `***`; text that is not a URL
/// is cut at the last `@` after `://`, so even a malformed address never shows
/// its userinfo.
pub fn url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut parsed) => {
            if parsed.username().is_empty() && parsed.password().is_none() {
                return raw.to_owned();
            }
            // Setting userinfo fails only for URLs that cannot have one
            // (`mailto:`), which also cannot carry credentials to hide.
            let _ = parsed.set_username("***");
            let _ = parsed.set_password(None);
            parsed.to_string()
        }
        Err(_) => match (raw.find("://"), raw.rfind('@')) {
            (Some(scheme_end), Some(at)) if at > scheme_end => {
                format!("{}***{}", &raw[..scheme_end + 3], &raw[at..])
            }
            _ => raw.to_owned(),
        },
    }
}

/// Shortest credential searched for in free text.
const MIN_WORD: usize = 3;

/// The secrets of `address` (user, password, both as written and
/// percent-decoded, and the whole URL), to be removed from any text.
#[derive(Clone, Default)]
pub struct Secrets {
    words: Vec<String>,
    address: Option<(String, String)>,
}

impl Secrets {
    pub fn of(address: &str) -> Secrets {
        let mut words = Vec::new();
        let after_scheme = address.find("://").map(|i| &address[i + 3..]);
        let userinfo = after_scheme
            .and_then(|rest| rest.rfind('@').map(|at| &rest[..at]))
            .unwrap_or("");
        // A credential of one or two characters would match all over free
        // text; the URL forms of it are still redacted.
        for part in userinfo.split(':').filter(|p| p.len() >= MIN_WORD) {
            words.push(part.to_owned());
            let decoded = percent_decode(part);
            if decoded != part {
                words.push(decoded);
            }
        }
        // Longest first, so a password containing the user name is removed
        // whole rather than leaving its tail.
        words.sort_by_key(|w| std::cmp::Reverse(w.len()));
        let address = (!userinfo.is_empty()).then(|| (address.to_owned(), url(address)));
        Secrets { words, address }
    }

    /// `text` with the address shown redacted and every credential word
    /// replaced by `***`.
    pub fn scrub(&self, text: &str) -> String {
        let mut out = match &self.address {
            Some((raw, shown)) => text.replace(raw, shown),
            None => text.to_owned(),
        };
        for word in &self.words {
            if out.contains(word.as_str()) {
                out = out.replace(word.as_str(), "***");
            }
        }
        out
    }
}

/// Shorthand for one-off text from a client library talking to `address`.
pub fn scrub(address: &str, text: &str) -> String {
    Secrets::of(address).scrub(text)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_hides_user_and_password() {
        assert_eq!(
            url("amqp://admin:s3cret@broker:5672/%2f"),
            "amqp://***@broker:5672/%2f"
        );
        assert_eq!(url("http://127.0.0.1:19090"), "http://127.0.0.1:19090");
        assert_eq!(url("amqp://u:p w@[bad"), "amqp://***@[bad");
    }

    #[test]
    fn scrub_removes_the_address_and_its_words() {
        let s = Secrets::of("amqp://admin:p%40ss@broker:5672/%2f");
        let text = s.scrub("cannot connect to amqp://admin:p%40ss@broker:5672/%2f as admin (p@ss)");
        assert!(!text.contains("p%40ss") && !text.contains("p@ss") && !text.contains("admin"));
        assert!(text.contains("amqp://***@broker:5672/%2f"), "{text}");
    }

    #[test]
    fn no_credentials_no_change() {
        assert_eq!(
            scrub("http://h:1", "refused by http://h:1"),
            "refused by http://h:1"
        );
    }
}
