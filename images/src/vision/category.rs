//! Wedding categories from provider tags, by a keyword table.
//!
//! A keyword matches a tag (or the caption) when its words appear in it as whole
//! words, in order, plurals folded ("wedding dress" matches the keyword "dress";
//! "flowers" matches "flower"; "address" does not match "dress"). Each category's
//! confidence combines the evidence for it as a noisy-or of `confidence × weight`,
//! so two good signs beat one; generic people words weigh less than specific ones.
//! The highest wins; with no match at all the category is `other`, as confident as
//! the best tag.

use super::Label;
use serde::Serialize;

/// A wedding photo category.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Category {
    /// Vows, altar, aisle.
    Ceremony,
    /// Party, dinner, dancing, cake.
    Reception,
    /// People as the subject.
    Portrait,
    /// Rings, shoes, flowers, table settings.
    Details,
    /// Dress, veil, hair and make-up.
    GettingReady,
    /// Nothing recognised.
    Other,
}

impl Category {
    /// The stable name: `ceremony`, `reception`, `portrait`, `details`, `getting-ready`, `other`.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Ceremony => "ceremony",
            Category::Reception => "reception",
            Category::Portrait => "portrait",
            Category::Details => "details",
            Category::GettingReady => "getting-ready",
            Category::Other => "other",
        }
    }
}

/// Keyword, category, weight (how much a match counts).
const TABLE: &[(&str, Category, f32)] = &[
    // Ceremony
    ("altar", Category::Ceremony, 1.0),
    ("church", Category::Ceremony, 0.9),
    ("chapel", Category::Ceremony, 0.9),
    ("officiant", Category::Ceremony, 1.0),
    ("priest", Category::Ceremony, 0.9),
    ("ceremony", Category::Ceremony, 1.0),
    ("aisle", Category::Ceremony, 0.9),
    ("vow", Category::Ceremony, 1.0),
    ("pew", Category::Ceremony, 0.9),
    ("arch", Category::Ceremony, 0.6),
    ("chuppah", Category::Ceremony, 1.0),
    // Reception
    ("cake", Category::Reception, 1.0),
    ("wedding cake", Category::Reception, 1.0),
    ("dance", Category::Reception, 1.0),
    ("dancing", Category::Reception, 1.0),
    ("banquet", Category::Reception, 1.0),
    ("party", Category::Reception, 0.9),
    ("reception", Category::Reception, 1.0),
    ("dinner", Category::Reception, 0.8),
    ("toast", Category::Reception, 0.8),
    ("champagne", Category::Reception, 0.7),
    ("celebration", Category::Reception, 0.6),
    ("nightclub", Category::Reception, 0.7),
    // Details
    ("ring", Category::Details, 1.0),
    ("wedding ring", Category::Details, 1.0),
    ("engagement ring", Category::Details, 1.0),
    ("shoe", Category::Details, 1.0),
    ("flower", Category::Details, 0.8),
    ("bouquet", Category::Details, 1.0),
    ("boutonniere", Category::Details, 1.0),
    ("table setting", Category::Details, 1.0),
    ("centrepiece", Category::Details, 1.0),
    ("centerpiece", Category::Details, 1.0),
    ("invitation", Category::Details, 1.0),
    ("jewellery", Category::Details, 0.9),
    ("jewelry", Category::Details, 0.9),
    ("tableware", Category::Details, 0.8),
    ("place card", Category::Details, 1.0),
    // Getting ready
    ("veil", Category::GettingReady, 1.0),
    ("wedding dress", Category::GettingReady, 0.9),
    ("dress", Category::GettingReady, 0.7),
    ("gown", Category::GettingReady, 0.7),
    ("makeup", Category::GettingReady, 1.0),
    ("make-up", Category::GettingReady, 1.0),
    ("cosmetics", Category::GettingReady, 1.0),
    ("hairstyle", Category::GettingReady, 0.8),
    ("mirror", Category::GettingReady, 0.8),
    ("robe", Category::GettingReady, 0.9),
    // Portrait: people as the subject; generic words count for less.
    ("bride", Category::Portrait, 0.8),
    ("groom", Category::Portrait, 0.8),
    ("bridegroom", Category::Portrait, 0.8),
    ("couple", Category::Portrait, 0.8),
    ("portrait", Category::Portrait, 1.0),
    ("portrait photography", Category::Portrait, 1.0),
    ("face", Category::Portrait, 0.7),
    ("smile", Category::Portrait, 0.6),
    ("person", Category::Portrait, 0.5),
    ("people", Category::Portrait, 0.4),
    ("human face", Category::Portrait, 0.7),
];

/// Lower-case words of `text`, plurals folded ("flowers" → "flower"; "dress" stays).
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric() && c != '-')
        .filter(|w| !w.is_empty())
        .map(|w| {
            let w = w.to_lowercase();
            if w.len() > 3 && w.ends_with('s') && !w.ends_with("ss") { w[..w.len() - 1].to_owned() } else { w }
        })
        .collect()
}

/// Whether `needle`'s words appear in `hay`, contiguous and in order.
fn contains_words(hay: &[String], needle: &[String]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// The category of an image from its tags (and caption), with its confidence.
pub fn categorize(tags: &[Label], caption: Option<&Label>) -> (Category, f32) {
    const ORDER: [Category; 5] =
        [Category::Ceremony, Category::Reception, Category::Details, Category::GettingReady, Category::Portrait];
    // Per category, the product of (1 - evidence): 1.0 means no evidence.
    let mut doubt = [1.0f32; 5];
    let table: Vec<(Vec<String>, Category, f32)> = TABLE.iter().map(|(k, c, w)| (words(k), *c, *w)).collect();
    for label in tags.iter().chain(caption) {
        let hay = words(&label.name);
        // A tag counts once per category, with its strongest keyword.
        let mut best = [0.0f32; 5];
        for (needle, category, weight) in &table {
            if contains_words(&hay, needle) {
                let i = ORDER.iter().position(|c| c == category).expect("every table category is ordered");
                best[i] = best[i].max(label.confidence.clamp(0.0, 1.0) * weight);
            }
        }
        for (d, b) in doubt.iter_mut().zip(best) {
            *d *= 1.0 - b;
        }
    }
    // Ties go to the earlier (more specific) category.
    let (mut winner, mut score) = (Category::Other, 0.0f32);
    for (category, d) in ORDER.iter().zip(doubt) {
        if 1.0 - d > score {
            (winner, score) = (*category, 1.0 - d);
        }
    }
    if winner == Category::Other {
        score = tags.iter().chain(caption).map(|l| l.confidence).fold(0.0, f32::max);
    }
    (winner, score)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(name: &str, confidence: f32) -> Label {
        Label { name: name.into(), confidence }
    }

    #[test]
    fn keywords_map_tags_to_categories() {
        let cases: &[(&[(&str, f32)], Category)] = &[
            (&[("Altar", 0.9), ("Church", 0.8), ("Person", 0.95)], Category::Ceremony),
            (&[("Wedding cake", 0.9), ("Person", 0.7)], Category::Reception),
            (&[("Dance floor", 0.8), ("Party", 0.7)], Category::Reception),
            (&[("Wedding ring", 0.92), ("Hand", 0.9)], Category::Details),
            (&[("Flowers", 0.85), ("Bouquet", 0.8)], Category::Details),
            (&[("Table setting", 0.88), ("Tableware", 0.8)], Category::Details),
            (&[("Veil", 0.9), ("Wedding dress", 0.9), ("Bride", 0.9)], Category::GettingReady),
            (&[("Face", 0.9), ("Smile", 0.9), ("Portrait", 0.8)], Category::Portrait),
            (&[("Bride", 0.95), ("Groom", 0.9)], Category::Portrait),
            (&[("Sky", 0.9), ("Cloud", 0.8)], Category::Other),
        ];
        for (tags, want) in cases {
            let tags: Vec<Label> = tags.iter().map(|(n, c)| label(n, *c)).collect();
            let (got, confidence) = categorize(&tags, None);
            assert_eq!(got, *want, "{tags:?}");
            assert!((0.0..=1.0).contains(&confidence) && confidence > 0.0, "{tags:?}: {confidence}");
        }
    }

    #[test]
    fn whole_words_only_and_the_caption_counts() {
        assert_eq!(categorize(&[label("Address", 0.9)], None).0, Category::Other, "`dress` is not in `address`");
        assert_eq!(categorize(&[label("Ringtone", 0.9)], None).0, Category::Other);
        let caption = label("a bride and groom cutting a cake", 0.8);
        assert_eq!(categorize(&[label("Wedding", 0.99)], Some(&caption)).0, Category::Reception);
        assert_eq!(categorize(&[], None), (Category::Other, 0.0));
    }

    #[test]
    fn more_evidence_is_more_confidence() {
        let one = categorize(&[label("Cake", 0.7)], None).1;
        let two = categorize(&[label("Cake", 0.7), label("Banquet", 0.7)], None).1;
        assert!(two > one && two <= 1.0, "{one} < {two}");
        assert_eq!(Category::GettingReady.as_str(), "getting-ready");
    }
}
