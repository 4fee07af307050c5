//! Fixture loading and builders for inputs that are easier to make than to ship: bombs, PNG and
//! WebP files with an EXIF chunk, TIFF files with tags.

use std::io::Write;
use std::path::PathBuf;

use fleet_images::{Decoded, Limits};

pub fn fixture_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/images").join(rel)
}

pub fn fixture(rel: &str) -> Vec<u8> {
    std::fs::read(fixture_path(rel)).unwrap_or_else(|e| panic!("fixture {rel}: {e}"))
}

pub fn decode_fixture(rel: &str) -> Decoded {
    fleet_images::decode(&fixture(rel), &Limits::default()).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Encodes an RGB image as JPEG with `image`'s encoder.
pub fn encode_jpeg(img: &image::RgbImage, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality).encode_image(img).unwrap();
    out
}

/// Encodes an RGB(A) image as PNG.
pub fn encode_png(img: &image::DynamicImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

pub fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 12);
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
    out
}

/// Inserts a chunk right after IHDR.
pub fn png_insert_after_ihdr(png: &[u8], kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let ihdr_end = 8 + 12 + 13;
    let mut out = png[..ihdr_end].to_vec();
    out.extend(png_chunk(kind, data));
    out.extend_from_slice(&png[ihdr_end..]);
    out
}

/// A PNG whose IHDR says `width × height` 8-bit grey, with `rows` rows of zero pixels in a zlib
/// stream built by repeating one compressed block of 1 MiB of zeros: a decompression bomb of a few
/// hundred KB. With `rows == height` the stream is complete and valid.
pub fn deflate_bomb_png(width: u32, height: u32, rows: u64) -> Vec<u8> {
    use flate2::{Compress, Compression, FlushCompress};
    let raw_len = rows * (u64::from(width) + 1); // filter byte + pixels per row, all zero
    let chunk_len: u64 = 1 << 20;
    let compress_chunk = |len: usize| {
        let mut c = Compress::new(Compression::best(), false);
        let mut out = Vec::with_capacity(len / 500 + 64);
        c.compress_vec(&vec![0u8; len], &mut out, FlushCompress::Sync).unwrap();
        out
    };
    let block = compress_chunk(chunk_len as usize);
    let tail = compress_chunk((raw_len % chunk_len) as usize);
    let mut zlib = vec![0x78, 0xDA];
    for _ in 0..raw_len / chunk_len {
        zlib.extend_from_slice(&block);
    }
    if !raw_len.is_multiple_of(chunk_len) {
        zlib.extend_from_slice(&tail);
    }
    zlib.extend_from_slice(&[0x03, 0x00]); // final, empty, fixed-Huffman block
    // Adler-32 of n zero bytes: a = 1, b = n mod 65521.
    let b = (raw_len % 65_521) as u32;
    zlib.extend_from_slice(&((b << 16) | 1).to_be_bytes());

    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(png_chunk(b"IHDR", &ihdr));
    png.extend(png_chunk(b"IDAT", &zlib));
    png.extend(png_chunk(b"IEND", &[]));
    png
}

/// The TIFF-structured EXIF payload of a JPEG's APP1 segment.
pub fn exif_payload_from_jpeg(jpeg: &[u8]) -> Vec<u8> {
    fleet_images::jpeg_markers::header_segments(jpeg)
        .into_iter()
        .find(|s| s.marker == 0xE1 && s.data.starts_with(b"Exif\0\0"))
        .map(|s| s.data[6..].to_vec())
        .expect("JPEG has an EXIF APP1 segment")
}

/// RIFF chunk ids of a WebP file, in order.
pub fn webp_chunks(webp: &[u8]) -> Vec<[u8; 4]> {
    let mut out = Vec::new();
    let mut pos = 12;
    while pos + 8 <= webp.len() {
        out.push(webp[pos..pos + 4].try_into().unwrap());
        let len = u32::from_le_bytes(webp[pos + 4..pos + 8].try_into().unwrap()) as usize;
        pos += 8 + len + (len & 1);
    }
    out
}

/// Turns a simple lossy WebP (`VP8 ` chunk only) into an extended one with an `EXIF` chunk.
pub fn webp_with_exif(simple: &[u8], width: u32, height: u32, exif: &[u8]) -> Vec<u8> {
    assert_eq!(&simple[12..16], b"VP8 ", "expects a simple lossy WebP");
    let mut body = b"WEBP".to_vec();
    let mut vp8x = vec![0x08, 0, 0, 0]; // flags: EXIF
    vp8x.extend_from_slice(&(width - 1).to_le_bytes()[..3]);
    vp8x.extend_from_slice(&(height - 1).to_le_bytes()[..3]);
    let push = |body: &mut Vec<u8>, id: &[u8; 4], data: &[u8]| {
        body.extend_from_slice(id);
        body.extend_from_slice(&(data.len() as u32).to_le_bytes());
        body.extend_from_slice(data);
        if data.len() % 2 == 1 {
            body.push(0);
        }
    };
    push(&mut body, b"VP8X", &vp8x);
    body.extend_from_slice(&simple[12..]);
    push(&mut body, b"EXIF", exif);
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend(body);
    out
}

/// An 8-bit RGB TIFF with Make and Model tags.
pub fn tiff_with_camera(width: u32, height: u32) -> Vec<u8> {
    use tiff::encoder::{TiffEncoder, colortype};
    use tiff::tags::Tag;
    let pixels: Vec<u8> = (0..width * height).flat_map(|i| [(i % 251) as u8, 80, 160]).collect();
    let mut out = std::io::Cursor::new(Vec::new());
    let mut encoder = TiffEncoder::new(&mut out).unwrap();
    let mut image = encoder.new_image::<colortype::RGB8>(width, height).unwrap();
    image.encoder().write_tag(Tag::Make, "FleetCam").unwrap();
    image.encoder().write_tag(Tag::Model, "Model T").unwrap();
    image.write_data(&pixels).unwrap();
    out.flush().unwrap();
    out.into_inner()
}

/// Mean absolute difference per channel between two same-sized RGB images.
pub fn mean_abs_diff(a: &image::RgbImage, b: &image::RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let sum: u64 = a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| u64::from(x.abs_diff(*y))).sum();
    sum as f64 / a.as_raw().len() as f64
}

/// Mean colour of an RGB image.
pub fn mean_rgb(img: &image::RgbImage) -> [f64; 3] {
    let mut sum = [0f64; 3];
    for p in img.pixels() {
        for (s, &v) in sum.iter_mut().zip(&p.0) {
            *s += f64::from(v);
        }
    }
    let n = f64::from(img.width() * img.height());
    sum.map(|s| s / n)
}
