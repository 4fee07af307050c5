//! The local-folder store: `root/<key>`, one file per object.
//!
//! Writes go to a hidden temporary file beside the target, are flushed to disk, then
//! renamed over it: a reader sees the old object or the new one, and a crash leaves
//! at most a stray `.*.fleet-tmp` file, never a torn object. File work runs on the
//! blocking pool so it never stalls the async workers.

use super::{ObjectMeta, ObjectStore, StorageError, validate_key};
use bytes::Bytes;
use futures::future::BoxFuture;
use std::io::{ErrorKind, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Objects as files under a root folder.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: Arc<PathBuf>,
}

impl LocalStore {
    /// A store under `root` (created on the first write when missing).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalStore { root: Arc::new(root.into()) }
    }

    /// The folder objects are stored under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path of `key`, after checking the key.
    fn path(&self, key: &str) -> Result<PathBuf, StorageError> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }

    /// Runs file work on the blocking pool.
    async fn blocking<T: Send + 'static>(
        work: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| StorageError::Retryable(format!("local storage task failed: {e}")))?
    }
}

/// An I/O error, as permanent or retryable.
fn io_error(what: &str, key: &str, e: std::io::Error) -> StorageError {
    let text = format!("{what} {key:?}: {e}");
    match e.kind() {
        ErrorKind::PermissionDenied
        | ErrorKind::ReadOnlyFilesystem
        | ErrorKind::NotADirectory
        | ErrorKind::IsADirectory
        | ErrorKind::InvalidInput
        | ErrorKind::InvalidFilename
        | ErrorKind::AlreadyExists
        | ErrorKind::DirectoryNotEmpty => StorageError::Permanent(text),
        // Full disk, quota, I/O errors, interrupted: may pass.
        _ => StorageError::Retryable(text),
    }
}

/// Whether an error only says the object is not there: no such file, or a folder
/// (or a file) where the key's path expects the other.
fn is_absent(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory | ErrorKind::IsADirectory)
}

fn write_atomically(path: &Path, key: &str, bytes: &[u8]) -> Result<(), StorageError> {
    let dir = path.parent().expect("a key's path has a parent: the root");
    std::fs::create_dir_all(dir).map_err(|e| io_error("creating the folder of", key, e))?;
    let name = path.file_name().expect("a checked key ends in a name").to_string_lossy();
    let tmp = dir.join(format!(".{name}.{:016x}.fleet-tmp", rand::random::<u64>()));
    let result = (|| {
        let mut file = std::fs::File::create_new(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_error("writing", key, e));
    }
    // The rename is durable once the folder is flushed too (best effort: some
    // file systems refuse to open folders for syncing).
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

impl ObjectStore for LocalStore {
    fn put<'a>(
        &'a self,
        key: &'a str,
        bytes: Bytes,
        _content_type: &'a str,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            let path = self.path(key)?;
            let key = key.to_owned();
            Self::blocking(move || write_atomically(&path, &key, &bytes)).await
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, StorageError>> {
        Box::pin(async move {
            let path = self.path(key)?;
            let key = key.to_owned();
            Self::blocking(move || match std::fs::read(&path) {
                Ok(b) => Ok(Some(Bytes::from(b))),
                Err(e) if is_absent(&e) => Ok(None),
                Err(e) => Err(io_error("reading", &key, e)),
            })
            .await
        })
    }

    fn get_at_most<'a>(&'a self, key: &'a str, max_bytes: u64) -> BoxFuture<'a, Result<Option<Bytes>, StorageError>> {
        Box::pin(async move {
            let path = self.path(key)?;
            let key = key.to_owned();
            Self::blocking(move || {
                use std::io::Read as _;
                let file = match std::fs::File::open(&path) {
                    Ok(f) => f,
                    Err(e) if is_absent(&e) => return Ok(None),
                    Err(e) => return Err(io_error("reading", &key, e)),
                };
                let meta = file.metadata().map_err(|e| io_error("reading", &key, e))?;
                if !meta.is_file() {
                    return Ok(None); // a folder (a prefix of other keys), as `head` reads it
                }
                let size = meta.len();
                if size > max_bytes {
                    return Err(super::too_large(&key, Some(size), max_bytes));
                }
                // Never more than the limit, even if the file grows meanwhile.
                let mut out = Vec::with_capacity(size as usize);
                file.take(max_bytes + 1).read_to_end(&mut out).map_err(|e| io_error("reading", &key, e))?;
                if out.len() as u64 > max_bytes {
                    return Err(super::too_large(&key, None, max_bytes));
                }
                Ok(Some(Bytes::from(out)))
            })
            .await
        })
    }

    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<ObjectMeta>, StorageError>> {
        Box::pin(async move {
            let path = self.path(key)?;
            let key = key.to_owned();
            Self::blocking(move || match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => Ok(Some(ObjectMeta { size: m.len(), content_type: None })),
                Ok(_) => Ok(None),
                Err(e) if is_absent(&e) => Ok(None),
                Err(e) => Err(io_error("reading", &key, e)),
            })
            .await
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            let path = self.path(key)?;
            let key = key.to_owned();
            Self::blocking(move || match std::fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if is_absent(&e) => Ok(()),
                Err(e) => Err(io_error("deleting", &key, e)),
            })
            .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh folder under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            let p = std::env::temp_dir().join(format!("fleet-storage-{:016x}", rand::random::<u64>()));
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn files_under(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                out.extend(files_under(&entry.path()));
            } else {
                out.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        out
    }

    #[tokio::test]
    async fn put_get_overwrite_delete() {
        let dir = TempDir::new();
        let store = LocalStore::new(dir.0.join("objects"));
        let key = "tenant/batch 1/ünïcödé ✓.jpg";
        assert_eq!(store.get(key).await.unwrap(), None);
        assert!(!store.exists(key).await.unwrap());
        assert!(matches!(store.get_existing(key).await, Err(StorageError::NotFound(k)) if k == key));

        store.put(key, Bytes::from_static(b"first"), "image/jpeg").await.unwrap();
        assert_eq!(store.get(key).await.unwrap().as_deref(), Some(&b"first"[..]));
        assert_eq!(store.head(key).await.unwrap(), Some(ObjectMeta { size: 5, content_type: None }));
        assert!(dir.0.join("objects/tenant/batch 1/ünïcödé ✓.jpg").is_file(), "keys map to paths under the root");

        store.put(key, Bytes::from_static(b"second, longer"), "image/jpeg").await.unwrap();
        assert_eq!(store.get_existing(key).await.unwrap(), Bytes::from_static(b"second, longer"));
        // Putting the same bytes again is harmless.
        store.put(key, Bytes::from_static(b"second, longer"), "image/jpeg").await.unwrap();
        assert_eq!(files_under(&dir.0), vec!["ünïcödé ✓.jpg".to_owned()], "no temporary file is left behind");

        // Read with a size limit: at the limit it comes back, over it the error names it.
        assert_eq!(store.get_at_most(key, 14).await.unwrap().as_deref(), Some(&b"second, longer"[..]));
        let e = store.get_at_most(key, 13).await.unwrap_err();
        assert!(matches!(&e, StorageError::Permanent(t) if t.contains("14 bytes, more than the 13")), "{e}");
        assert_eq!(store.get_at_most("never/was/there", 13).await.unwrap(), None);
        assert_eq!(store.get_at_most("tenant", 13).await.unwrap(), None, "a folder is no object");

        store.delete(key).await.unwrap();
        assert_eq!(store.get(key).await.unwrap(), None);
        store.delete(key).await.unwrap(); // idempotent
        store.delete("never/was/there").await.unwrap();
    }

    #[tokio::test]
    async fn a_large_object_round_trips() {
        let dir = TempDir::new();
        let store = LocalStore::new(&dir.0);
        let big: Vec<u8> = (0..5 * 1024 * 1024).map(|i: u32| (i % 251) as u8).collect();
        store.put("big.bin", Bytes::from(big.clone()), "application/octet-stream").await.unwrap();
        assert_eq!(store.get("big.bin").await.unwrap().unwrap(), big);
        assert_eq!(store.head("big.bin").await.unwrap().unwrap().size, big.len() as u64);
    }

    #[tokio::test]
    async fn bad_keys_are_refused_before_touching_the_disk() {
        let dir = TempDir::new();
        let store = LocalStore::new(dir.0.join("root"));
        std::fs::write(dir.0.join("outside"), b"secret").unwrap();
        for bad in ["../outside", "/etc/passwd", "a/../../outside", "a\0b", ""] {
            let e = store.put(bad, Bytes::from_static(b"x"), "text/plain").await.unwrap_err();
            assert!(matches!(e, StorageError::InvalidKey { .. }), "{bad:?}: {e}");
            assert!(matches!(store.get(bad).await, Err(StorageError::InvalidKey { .. })), "{bad:?}");
            assert!(matches!(store.delete(bad).await, Err(StorageError::InvalidKey { .. })), "{bad:?}");
        }
        assert_eq!(std::fs::read(dir.0.join("outside")).unwrap(), b"secret");
        assert!(!dir.0.join("root").exists(), "nothing was written");
    }

    #[tokio::test]
    async fn a_key_under_a_file_is_a_clear_permanent_error_and_reads_as_absent() {
        let dir = TempDir::new();
        let store = LocalStore::new(&dir.0);
        store.put("a", Bytes::from_static(b"file"), "text/plain").await.unwrap();
        let e = store.put("a/b", Bytes::from_static(b"x"), "text/plain").await.unwrap_err();
        assert!(!e.is_retryable(), "{e}");
        assert!(e.to_string().contains("\"a/b\""), "{e}");
        assert_eq!(store.get("a/b").await.unwrap(), None);
        // A folder made by a longer key is not an object either.
        store.put("d/e", Bytes::from_static(b"x"), "text/plain").await.unwrap();
        assert_eq!(store.get("d").await.unwrap(), None);
        assert_eq!(store.head("d").await.unwrap(), None);
    }

    #[tokio::test]
    async fn concurrent_writers_leave_one_whole_object() {
        let dir = TempDir::new();
        let store = LocalStore::new(&dir.0);
        let writes = (0..8u8).map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.put("same", Bytes::from(vec![i; 64 * 1024]), "x/y").await })
        });
        for w in writes {
            w.await.unwrap().unwrap();
        }
        let got = store.get("same").await.unwrap().unwrap();
        assert_eq!(got.len(), 64 * 1024);
        assert!(got.iter().all(|b| *b == got[0]), "one writer's bytes, whole");
        assert_eq!(files_under(&dir.0), vec!["same".to_owned()]);
    }
}
