//! The trait of the indexes the controller's watches feed (the store index,
//! the consumer index): below both the watches and the indexes, so each
//! depends on it and not on the other (as linkerd's `kubert::index`).

/// An index fed by a watch on `K`, as linkerd's policy indexes are.
pub trait IndexResource<K> {
    /// An object was created or changed.
    fn apply(&mut self, object: &K);
    /// An object was deleted.
    fn delete(&mut self, object: &K);
    /// A relist completed: `all` replaces every entry of this kind.
    fn reset(&mut self, all: &[K]);
}
