"""The image service: content store, image records, registry pull/push, import/export, GC."""
