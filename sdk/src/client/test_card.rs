//! A moving test card with a big frame counter, for `rhelp share --test-pattern`: a person
//! watching the helper's view sees frames arrive and count up, and a test can read the
//! counter back from the decoded pixels ([`TestCard::read_counter`]).
//!
//! The picture: eight vertical colour bars; in the middle, a black box with the frame
//! number modulo 10⁶ as six white digits drawn from a built-in 5×7 bitmap font (no font
//! files); along the bottom, a dark band with a white square that moves with each frame.
//! Encoded as PNG (content profile v1, PROTOCOL.md §8.8), which every browser decodes.

/// Digits shown: the frame number modulo 10^6, zero-padded.
pub const DIGITS: usize = 6;
/// The smallest card, pixels.
pub const MIN_SIZE: (u32, u32) = (64, 48);
/// The largest card side, pixels.
pub const MAX_SIDE: u32 = 4096;

/// 5×7 digits: one byte per row, bit 4 the leftmost column.
const FONT: [[u8; 7]; 10] = [
    [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E], // 0
    [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E], // 1
    [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F], // 2
    [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E], // 3
    [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02], // 4
    [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E], // 5
    [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E], // 6
    [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08], // 7
    [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E], // 8
    [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C], // 9
];

const BARS: [[u8; 3]; 8] = [
    [235, 235, 235],
    [235, 235, 16],
    [16, 235, 235],
    [16, 235, 16],
    [235, 16, 235],
    [235, 16, 16],
    [16, 16, 235],
    [16, 16, 16],
];

/// Why a test card could not be made or encoded.
#[derive(Debug, thiserror::Error)]
pub enum TestCardError {
    /// A size outside [`MIN_SIZE`] to [`MAX_SIDE`].
    #[error("test card size {0}x{1} is outside 64x48 to 4096x4096")]
    Size(u32, u32),
    /// The PNG encoder failed.
    #[error("PNG encoding: {0}")]
    Png(#[from] png::EncodingError),
}

/// A test card of a fixed size.
#[derive(Debug, Clone, Copy)]
pub struct TestCard {
    width: u32,
    height: u32,
    /// Pixels per font cell.
    scale: u32,
    /// Top-left corner of the first digit.
    origin: (u32, u32),
}

impl TestCard {
    /// A card of `width` × `height` pixels.
    pub fn new(width: u32, height: u32) -> Result<TestCard, TestCardError> {
        if width < MIN_SIZE.0 || height < MIN_SIZE.1 || width > MAX_SIDE || height > MAX_SIDE {
            return Err(TestCardError::Size(width, height));
        }
        // The counter box (37 cells wide, 9 high with its margin) takes most of the width
        // and at most 9/16 of the height, clear of the moving band at the bottom.
        let scale = (width / 40).min(height / 16).max(1);
        let text_width = (DIGITS as u32 * 6 - 1) * scale;
        let origin = ((width - text_width) / 2, (height - 7 * scale) / 2);
        Ok(TestCard {
            width,
            height,
            scale,
            origin,
        })
    }

    /// Width, pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height, pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Frame `n` as 8-bit RGB, row by row.
    pub fn rgb(&self, n: u64) -> Vec<u8> {
        let (w, h) = (self.width as usize, self.height as usize);
        let mut px = vec![0u8; w * h * 3];
        let mut put = |x: usize, y: usize, c: [u8; 3]| {
            let i = (y * w + x) * 3;
            px[i..i + 3].copy_from_slice(&c);
        };
        let band = h * 13 / 16;
        for y in 0..h {
            for x in 0..w {
                let c = if y >= band {
                    [64, 64, 64]
                } else {
                    BARS[x * BARS.len() / w]
                };
                put(x, y, c);
            }
        }
        // The moving square: one step of w/60 pixels per frame, wrapping.
        let side = h / 8;
        let step = (w / 60).max(1) as u64;
        let span = (w - side) as u64;
        let left = ((n.wrapping_mul(step)) % span.max(1)) as usize;
        let top = band + (h - band - side) / 2;
        for y in top..top + side {
            for x in left..left + side {
                put(x, y, [255, 255, 255]);
            }
        }
        // The counter box and its digits.
        let s = self.scale as usize;
        let (ox, oy) = (self.origin.0 as usize, self.origin.1 as usize);
        let text_width = (DIGITS * 6 - 1) * s;
        for y in oy - s..oy + 8 * s {
            for x in ox - s..ox + text_width + s {
                put(x, y, [0, 0, 0]);
            }
        }
        for (i, digit) in digits(n).iter().enumerate() {
            for (row, bits) in FONT[*digit as usize].iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) == 0 {
                        continue;
                    }
                    let (cx, cy) = (ox + (i * 6 + col) * s, oy + row * s);
                    for y in cy..cy + s {
                        for x in cx..cx + s {
                            put(x, y, [255, 255, 255]);
                        }
                    }
                }
            }
        }
        px
    }

    /// Frame `n` as a PNG file.
    pub fn png(&self, n: u64) -> Result<Vec<u8>, TestCardError> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, self.width, self.height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_compression(png::Compression::Fast);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&self.rgb(n))?;
        writer.finish()?;
        Ok(out)
    }

    /// The counter shown in an RGB picture of this card's size (the frame number modulo
    /// 10⁶), read from the centre of every font cell; `None` if a digit is not one of the
    /// font's.
    pub fn read_counter(&self, rgb: &[u8]) -> Option<u64> {
        let w = self.width as usize;
        if rgb.len() != w * self.height as usize * 3 {
            return None;
        }
        let s = self.scale as usize;
        let (ox, oy) = (self.origin.0 as usize, self.origin.1 as usize);
        let lit = |x: usize, y: usize| {
            let i = (y * w + x) * 3;
            rgb[i..i + 3].iter().map(|&c| u32::from(c)).sum::<u32>() > 3 * 128
        };
        let mut value = 0u64;
        for i in 0..DIGITS {
            let mut glyph = [0u8; 7];
            for (row, bits) in glyph.iter_mut().enumerate() {
                for col in 0..5 {
                    if lit(ox + (i * 6 + col) * s + s / 2, oy + row * s + s / 2) {
                        *bits |= 0x10 >> col;
                    }
                }
            }
            let digit = FONT.iter().position(|g| *g == glyph)?;
            value = value * 10 + digit as u64;
        }
        Some(value)
    }
}

/// The counter's digits, most significant first.
fn digits(n: u64) -> [u8; DIGITS] {
    let mut out = [0u8; DIGITS];
    let mut v = n % 10u64.pow(DIGITS as u32);
    for d in out.iter_mut().rev() {
        *d = (v % 10) as u8;
        v /= 10;
    }
    out
}

/// Decodes a PNG file to 8-bit RGB (dropping alpha): `(width, height, pixels)`. For tests
/// and for checking what arrived.
pub fn decode_png(data: &[u8]) -> Result<(u32, u32, Vec<u8>), String> {
    let decoder = png::Decoder::new(std::io::Cursor::new(data));
    let mut reader = decoder.read_info().map_err(|e| e.to_string())?;
    let size = reader
        .output_buffer_size()
        .ok_or("the image is too large to decode")?;
    let mut buf = vec![0u8; size];
    let info = reader.next_frame(&mut buf).map_err(|e| e.to_string())?;
    buf.truncate(info.buffer_size());
    let rgb = match (info.color_type, info.bit_depth) {
        (png::ColorType::Rgb, png::BitDepth::Eight) => buf,
        (png::ColorType::Rgba, png::BitDepth::Eight) => buf
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect(),
        other => return Err(format!("unsupported PNG layout {other:?}")),
    };
    Ok((info.width, info.height, rgb))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counter_reads_back_from_the_decoded_png() {
        let card = TestCard::new(320, 180).unwrap();
        for n in [0u64, 7, 42, 123_456, 1_000_001] {
            let (w, h, rgb) = decode_png(&card.png(n).unwrap()).unwrap();
            assert_eq!((w, h), (320, 180));
            assert_eq!(card.read_counter(&rgb), Some(n % 1_000_000), "frame {n}");
        }
    }

    #[test]
    fn consecutive_frames_differ_and_sizes_are_checked() {
        let card = TestCard::new(64, 48).unwrap();
        assert_ne!(card.rgb(1), card.rgb(2));
        assert_eq!(card.read_counter(&card.rgb(9)), Some(9));
        assert!(TestCard::new(63, 48).is_err());
        assert!(TestCard::new(64, 4097).is_err());
    }
}
