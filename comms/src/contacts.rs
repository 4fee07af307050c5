//! Who a message is with: clients matched by email address and by phone number.
//!
//! Phone numbers are compared in E.164, parsed with the supplier's default region (a
//! UK photographer's client writes `07911 123456`). A sender that is not a phone
//! number (an alphanumeric SMS sender such as `VENUE`, or anything with letters) is
//! never parsed: the phone library would guess digits out of it.

use std::collections::HashMap;

/// `raw` as E.164 (`+447911123456`), read with `default_region` (ISO 3166 alpha-2,
/// e.g. `GB`) when it has no country code; `None` for anything that is not a valid
/// phone number, alphanumeric senders included. `whatsapp:` and `tel:` prefixes are
/// accepted.
pub fn normalise_phone(raw: &str, default_region: &str) -> Option<String> {
    let raw = raw.trim();
    let raw = raw
        .strip_prefix("whatsapp:")
        .or_else(|| raw.strip_prefix("tel:"))
        .or_else(|| raw.strip_prefix("sms:"))
        .unwrap_or(raw);
    // Letters are never part of a number here (phonenumber maps them to keypad digits).
    if raw.is_empty()
        || !raw.chars().all(|c| c.is_ascii_digit() || matches!(c, '+' | ' ' | '-' | '(' | ')' | '.' | '/'))
        || raw.chars().filter(char::is_ascii_digit).count() < 5
    {
        return None;
    }
    let region = default_region.trim().to_ascii_uppercase().parse::<phonenumber::country::Id>().ok();
    let number = phonenumber::parse(region, raw).ok()?;
    if !phonenumber::is_valid(&number) {
        return None;
    }
    Some(number.format().mode(phonenumber::Mode::E164).to_string())
}

/// A lower-cased, trimmed email address, or `None` when it is not one.
pub fn normalise_email(raw: &str) -> Option<String> {
    let a = raw.trim().trim_start_matches("mailto:").trim_matches(|c| c == '<' || c == '>').to_lowercase();
    let (local, domain) = a.split_once('@')?;
    (!local.is_empty() && domain.contains('.') && !a.chars().any(char::is_whitespace)).then_some(a)
}

/// A supplier's clients by email address and phone number.
#[derive(Debug, Clone, Default)]
pub struct ContactBook {
    region: String,
    emails: HashMap<String, String>,
    phones: HashMap<String, String>,
    own_emails: Vec<String>,
    own_phones: Vec<String>,
}

impl ContactBook {
    /// An empty book for a supplier in `default_region` (ISO 3166 alpha-2).
    pub fn new(default_region: &str) -> Self {
        ContactBook { region: default_region.to_owned(), ..ContactBook::default() }
    }

    /// The supplier's default region.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// Adds client `client` with its addresses and numbers (numbers that do not parse
    /// are ignored).
    pub fn add_client(&mut self, client: &str, emails: &[&str], phones: &[&str]) {
        for e in emails.iter().filter_map(|e| normalise_email(e)) {
            self.emails.insert(e, client.to_owned());
        }
        for p in phones.iter().filter_map(|p| normalise_phone(p, &self.region)) {
            self.phones.insert(p, client.to_owned());
        }
    }

    /// Marks addresses and numbers as the supplier's own (so direction can be told).
    pub fn add_own(&mut self, emails: &[&str], phones: &[&str]) {
        self.own_emails.extend(emails.iter().filter_map(|e| normalise_email(e)));
        let region = self.region.clone();
        self.own_phones.extend(phones.iter().filter_map(|p| normalise_phone(p, &region)));
    }

    /// The client with email address `address`.
    pub fn client_by_email(&self, address: &str) -> Option<&str> {
        self.emails.get(&normalise_email(address)?).map(String::as_str)
    }

    /// The client with phone number `raw` (any format the region reads).
    pub fn client_by_phone(&self, raw: &str) -> Option<&str> {
        self.phones.get(&normalise_phone(raw, &self.region)?).map(String::as_str)
    }

    /// True when `address` is one of the supplier's own.
    pub fn is_own_email(&self, address: &str) -> bool {
        normalise_email(address).is_some_and(|a| self.own_emails.contains(&a))
    }

    /// True when `raw` is one of the supplier's own numbers.
    pub fn is_own_phone(&self, raw: &str) -> bool {
        normalise_phone(raw, &self.region).is_some_and(|p| self.own_phones.contains(&p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn national_numbers_take_the_suppliers_region() {
        assert_eq!(normalise_phone("07911 123456", "GB").as_deref(), Some("+447911123456"));
        assert_eq!(normalise_phone("+44 7911 123456", "US").as_deref(), Some("+447911123456"));
        assert_eq!(normalise_phone("(415) 555-2671", "US").as_deref(), Some("+14155552671"));
        assert_eq!(normalise_phone("whatsapp:+14155552671", "GB").as_deref(), Some("+14155552671"));
    }

    #[test]
    fn alphanumeric_senders_stay_unmatched() {
        assert_eq!(normalise_phone("VENUE", "GB"), None);
        assert_eq!(normalise_phone("1-800-FLOWERS", "US"), None);
        assert_eq!(normalise_phone("Bakery42", "GB"), None);
        assert_eq!(normalise_phone("123", "GB"), None);
        let mut book = ContactBook::new("GB");
        book.add_client("c1", &["Anna@Example.com"], &["07911 123456"]);
        assert_eq!(book.client_by_phone("VENUE"), None);
    }

    #[test]
    fn clients_match_by_email_and_phone() {
        let mut book = ContactBook::new("GB");
        book.add_client("c1", &["Anna@Example.com"], &["07911 123456"]);
        assert_eq!(book.client_by_email(" anna@example.COM "), Some("c1"));
        assert_eq!(book.client_by_phone("+447911123456"), Some("c1"));
        assert_eq!(book.client_by_phone("0044 7911 123456"), Some("c1"));
        assert_eq!(book.client_by_email("other@example.com"), None);
    }
}
