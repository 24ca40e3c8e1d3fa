//! The answers the store gives: [`Value`], a recorded result, and [`Outcome`], what a
//! check-or-insert found. Plain data, shared by every layer above the index.

/// A stored value: the result recorded with a key.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Value(Box<[u8]>);

impl Value {
    /// The bytes, owned.
    pub fn into_vec(self) -> Vec<u8> {
        self.0.into_vec()
    }
}

impl AsRef<[u8]> for Value {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl std::ops::Deref for Value {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl PartialEq<[u8]> for Value {
    fn eq(&self, other: &[u8]) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&[u8]> for Value {
    fn eq(&self, other: &&[u8]) -> bool {
        *self.0 == **other
    }
}

impl<const N: usize> PartialEq<&[u8; N]> for Value {
    fn eq(&self, other: &&[u8; N]) -> bool {
        *self.0 == other[..]
    }
}

impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match std::str::from_utf8(&self.0) {
            Ok(text) => write!(f, "Value({text:?})"),
            Err(_) => write!(f, "Value({:02x?})", &self.0),
        }
    }
}

impl From<&[u8]> for Value {
    fn from(bytes: &[u8]) -> Self {
        Value(bytes.into())
    }
}

/// The answer of a check-or-insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The key was new (or its earlier entry had expired): key and value are now recorded.
    Inserted,
    /// The key was seen and has not expired: here is the value recorded with it first.
    Duplicate(Value),
}

impl Outcome {
    /// Whether this is [`Outcome::Duplicate`].
    pub fn is_duplicate(&self) -> bool {
        matches!(self, Outcome::Duplicate(_))
    }
}
