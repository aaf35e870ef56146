//! Database URLs: which backend a URL names, the default SQLite file, and
//! redaction of passwords for messages.

use std::path::Path;

use crate::StoreError;

/// The file name of the default SQLite database in a state directory.
pub const SQLITE_FILE: &str = "liability.sqlite";

/// The backend a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `memory`.
    Memory,
    /// `sqlite:` or `sqlite://`.
    Sqlite,
    /// `postgres://` or `postgresql://`.
    Postgres,
}

impl Backend {
    /// The backend for `url`.
    ///
    /// # Errors
    /// [`StoreError::BadUrl`] for an empty URL or one without a scheme,
    /// [`StoreError::UnsupportedScheme`] for any other scheme.
    pub fn of(url: &str) -> Result<Backend, StoreError> {
        if url == "memory" {
            return Ok(Backend::Memory);
        }
        let Some((scheme, _)) = url.split_once(':') else {
            return Err(StoreError::BadUrl {
                url: redact(url),
                reason: "no scheme: expected \"memory\", \"sqlite:PATH\" or \"postgres://…\""
                    .to_owned(),
            });
        };
        match scheme {
            "sqlite" => Ok(Backend::Sqlite),
            "postgres" | "postgresql" => Ok(Backend::Postgres),
            _ => Err(StoreError::UnsupportedScheme {
                scheme: scheme.chars().take(64).collect(),
                url: redact(url),
            }),
        }
    }

    /// The name [`TrustStore::backend`](crate::TrustStore::backend) reports.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// The default database: `<state_dir>/liability.sqlite`, opened with
/// `mode=rwc` so the file is created if missing (the directory must exist).
/// Characters a URL would misread (`?`, `#`, `%`, spaces, …) are
/// percent-encoded.
pub fn sqlite_url(state_dir: &Path) -> String {
    let path = state_dir.join(SQLITE_FILE);
    let mut url = String::from("sqlite://");
    for byte in path.to_string_lossy().bytes() {
        if byte.is_ascii_alphanumeric() || b"/-._~".contains(&byte) {
            url.push(char::from(byte));
        } else {
            url.push_str(&format!("%{byte:02X}"));
        }
    }
    url.push_str("?mode=rwc");
    url
}

/// `url` with its password (in the user info or a `password=` query
/// parameter) replaced by `***`, for messages and logs. Text that does not
/// parse as a URL is returned as is, since it has no password field to find.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return redact_query(url);
    };
    let rest_start = scheme_end + 3;
    let rest = &url[rest_start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_len];
    let mut out = String::with_capacity(url.len());
    out.push_str(&url[..rest_start]);
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            match userinfo.split_once(':') {
                Some((user, _password)) => {
                    out.push_str(user);
                    out.push_str(":***");
                }
                None => out.push_str(userinfo),
            }
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    out.push_str(&redact_query(&rest[authority_len..]));
    out
}

/// Replaces the value of every `password=` query parameter.
fn redact_query(text: &str) -> String {
    let Some(q) = text.find('?') else {
        return text.to_owned();
    };
    let (head, query) = text.split_at(q + 1);
    let (query, fragment) = match query.find('#') {
        Some(h) => query.split_at(h),
        None => (query, ""),
    };
    let params: Vec<String> = query
        .split('&')
        .map(|param| match param.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
            _ => param.to_owned(),
        })
        .collect();
    format!("{head}{}{fragment}", params.join("&"))
}

/// `url` as sqlx should see it: a SQLite URL without a `mode` gets
/// `mode=rwc`, so the file is created if missing.
pub(crate) fn with_create_mode(url: &str) -> String {
    let query = url.split_once('?').map(|(_, q)| q).unwrap_or("");
    if query.split('&').any(|p| p.starts_with("mode=")) {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn passwords_in_user_info_and_query_are_redacted() {
        assert_eq!(
            redact("postgres://ahv:s3cret@db.example:5432/ahv"),
            "postgres://ahv:***@db.example:5432/ahv"
        );
        assert_eq!(
            redact("postgresql://ahv:p@ss@db/ahv?sslmode=disable"),
            "postgresql://ahv:***@db/ahv?sslmode=disable"
        );
        assert_eq!(
            redact("postgres://ahv@db/ahv?password=s3cret&host=/run#x"),
            "postgres://ahv@db/ahv?password=***&host=/run#x"
        );
        assert_eq!(redact("postgres://db/ahv"), "postgres://db/ahv");
        assert_eq!(redact("sqlite:/tmp/x?mode=rwc"), "sqlite:/tmp/x?mode=rwc");
        assert_eq!(redact("memory"), "memory");
    }

    #[test]
    fn backends_are_known_by_scheme() {
        assert_eq!(Backend::of("memory").unwrap(), Backend::Memory);
        assert_eq!(Backend::of("sqlite:x.db").unwrap(), Backend::Sqlite);
        assert_eq!(Backend::of("sqlite:///x.db").unwrap(), Backend::Sqlite);
        assert_eq!(Backend::of("postgres://h/d").unwrap(), Backend::Postgres);
        assert_eq!(Backend::of("postgresql://h/d").unwrap(), Backend::Postgres);
        let err = Backend::of("mysql://root:hunter2@h/d").unwrap_err();
        assert!(
            matches!(&err, StoreError::UnsupportedScheme { scheme, url }
                if scheme == "mysql" && url == "mysql://root:***@h/d"),
            "{err}"
        );
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(matches!(
            Backend::of("").unwrap_err(),
            StoreError::BadUrl { .. }
        ));
        assert!(matches!(
            Backend::of("Memory").unwrap_err(),
            StoreError::BadUrl { .. }
        ));
    }

    #[test]
    fn the_default_sqlite_url_is_in_the_state_dir_and_creates_the_file() {
        let url = sqlite_url(Path::new("/var/lib/ahv"));
        assert_eq!(url, "sqlite:///var/lib/ahv/liability.sqlite?mode=rwc");
        let odd = sqlite_url(Path::new("/tmp/a b?#%"));
        assert_eq!(
            odd,
            "sqlite:///tmp/a%20b%3F%23%25/liability.sqlite?mode=rwc"
        );
    }

    #[test]
    fn sqlite_urls_without_a_mode_get_create_mode() {
        assert_eq!(with_create_mode("sqlite:x.db"), "sqlite:x.db?mode=rwc");
        assert_eq!(
            with_create_mode("sqlite:x.db?cache=shared"),
            "sqlite:x.db?cache=shared&mode=rwc"
        );
        assert_eq!(
            with_create_mode("sqlite:x.db?mode=ro"),
            "sqlite:x.db?mode=ro"
        );
    }

    proptest! {
        #[test]
        fn redaction_never_leaks_the_password(
            user in "[a-z]{1,8}",
            password in "[A-Z][A-Za-z0-9!$*]{3,15}",
            host in "[a-z]{1,8}",
        ) {
            let url = format!("postgres://{user}:{password}@{host}/db?password={password}");
            let redacted = redact(&url);
            prop_assert!(!redacted.contains(&password), "{redacted}");
            prop_assert!(redacted.contains(&host));
            prop_assert!(redacted.contains(&user));
        }

        #[test]
        fn redaction_and_scheme_detection_never_panic(text in "\\PC{0,64}") {
            let _ = redact(&text);
            let _ = Backend::of(&text);
        }
    }
}
