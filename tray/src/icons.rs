//! The tray's icons: the one set used for every state, drawn at start so they
//! look the same under any icon theme and tray host. Each is a coloured disc
//! with a sign, anti-aliased, as SNI pixmaps (ARGB32, network byte order). The
//! disc brings its own background, so the sign reads the same on a light or a
//! dark panel, and the colour tells the state at a glance; the tray sets no
//! icon name, since a host would then take a theme's icon for some states and
//! ours for the others.

use std::sync::OnceLock;

use crate::model::Condition;

/// Sizes handed to the tray host; it picks the closest.
pub const SIZES: [u32; 4] = [16, 22, 32, 48];

/// One square ARGB32 image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pixmap {
    pub size: u32,
    pub argb: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sign {
    Check,
    Download,
    Restart,
    Cross,
    Exclamation,
    Dash,
}

type Rgb = [u8; 3];

fn look(c: Condition) -> (Rgb, Sign, Rgb) {
    const WHITE: Rgb = [0xff, 0xff, 0xff];
    match c {
        Condition::UpToDate => ([0x2e, 0x7d, 0x32], Sign::Check, WHITE),
        Condition::Busy(_) => ([0x15, 0x65, 0xc0], Sign::Download, WHITE),
        Condition::RebootPending => ([0xe6, 0x51, 0x00], Sign::Restart, WHITE),
        Condition::Failed => ([0xc6, 0x28, 0x28], Sign::Cross, WHITE),
        Condition::RolledBack => ([0xf9, 0xa8, 0x25], Sign::Exclamation, [0x21, 0x21, 0x21]),
        Condition::Unreachable => ([0x75, 0x75, 0x75], Sign::Dash, WHITE),
    }
}

/// The pixmaps of one state, drawn once per state and kept.
pub fn pixmaps(c: Condition) -> &'static [Pixmap] {
    static CACHE: [OnceLock<Vec<Pixmap>>; 6] = [const { OnceLock::new() }; 6];
    let slot = match c {
        Condition::UpToDate => 0,
        Condition::Busy(_) => 1,
        Condition::RebootPending => 2,
        Condition::Failed => 3,
        Condition::RolledBack => 4,
        Condition::Unreachable => 5,
    };
    CACHE[slot].get_or_init(|| SIZES.iter().map(|&s| draw(c, s)).collect())
}

/// Draws one state at `size`×`size` pixels.
pub fn draw(c: Condition, size: u32) -> Pixmap {
    const SUB: u32 = 4;
    let (disc, sign, ink) = look(c);
    let mut argb = Vec::with_capacity((size * size * 4) as usize);
    for py in 0..size {
        for px in 0..size {
            // Premultiplied sums over SUB×SUB samples.
            let mut acc = [0f32; 4];
            for sy in 0..SUB {
                for sx in 0..SUB {
                    let x = (px as f32 + (sx as f32 + 0.5) / SUB as f32) / size as f32;
                    let y = (py as f32 + (sy as f32 + 0.5) / SUB as f32) / size as f32;
                    let colour = if in_sign(sign, x, y) {
                        Some(ink)
                    } else if in_disc(x, y) {
                        Some(disc)
                    } else {
                        None
                    };
                    if let Some(rgb) = colour {
                        acc[0] += 1.0;
                        for i in 0..3 {
                            acc[i + 1] += f32::from(rgb[i]);
                        }
                    }
                }
            }
            let n = (SUB * SUB) as f32;
            let a = acc[0] / n;
            argb.push((a * 255.0).round() as u8);
            for v in &acc[1..] {
                let c = if acc[0] > 0.0 { v / acc[0] } else { 0.0 };
                argb.push(c.round() as u8);
            }
        }
    }
    Pixmap { size, argb }
}

fn in_disc(x: f32, y: f32) -> bool {
    let (dx, dy) = (x - 0.5, y - 0.5);
    dx * dx + dy * dy <= 0.47 * 0.47
}

fn in_sign(sign: Sign, x: f32, y: f32) -> bool {
    const W: f32 = 0.065;
    let p = (x, y);
    match sign {
        Sign::Check => {
            near(p, (0.27, 0.52), (0.43, 0.68), W) || near(p, (0.43, 0.68), (0.74, 0.35), W)
        }
        Sign::Cross => {
            near(p, (0.32, 0.32), (0.68, 0.68), W) || near(p, (0.68, 0.32), (0.32, 0.68), W)
        }
        Sign::Dash => near(p, (0.28, 0.5), (0.72, 0.5), W),
        Sign::Exclamation => {
            near(p, (0.5, 0.24), (0.5, 0.58), W + 0.01) || dist((0.5, 0.75), p) <= W + 0.015
        }
        Sign::Download => {
            near(p, (0.5, 0.2), (0.5, 0.56), W)
                || in_triangle(p, (0.3, 0.5), (0.7, 0.5), (0.5, 0.72))
                || near(p, (0.3, 0.8), (0.7, 0.8), W * 0.8)
        }
        Sign::Restart => {
            let (c, r) = ((0.5, 0.5), 0.25);
            let d = dist(c, p);
            let a = (y - 0.5).atan2(x - 0.5).to_degrees();
            // The ring leaves a gap at the top, between -100° and -40° (y grows down).
            let on_ring = (d - r).abs() <= W && !(-100.0..-40.0).contains(&a);
            let end = (-100f32).to_radians();
            let e = (0.5 + r * end.cos(), 0.5 + r * end.sin());
            let (t, n) = ((-end.sin(), end.cos()), (end.cos(), end.sin()));
            let tip = (e.0 + t.0 * 0.16, e.1 + t.1 * 0.16);
            let b1 = (e.0 + n.0 * 0.14, e.1 + n.1 * 0.14);
            let b2 = (e.0 - n.0 * 0.14, e.1 - n.1 * 0.14);
            on_ring || in_triangle(p, tip, b1, b2)
        }
    }
}

fn dist(a: (f32, f32), b: (f32, f32)) -> f32 {
    ((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)).sqrt()
}

/// Whether `p` lies within `w` of the segment `a`–`b`.
fn near(p: (f32, f32), a: (f32, f32), b: (f32, f32), w: f32) -> bool {
    let (abx, aby) = (b.0 - a.0, b.1 - a.1);
    let t = (((p.0 - a.0) * abx + (p.1 - a.1) * aby) / (abx * abx + aby * aby)).clamp(0.0, 1.0);
    dist(p, (a.0 + t * abx, a.1 + t * aby)) <= w
}

fn in_triangle(p: (f32, f32), a: (f32, f32), b: (f32, f32), c: (f32, f32)) -> bool {
    let side = |u: (f32, f32), v: (f32, f32)| (v.0 - u.0) * (p.1 - u.1) - (v.1 - u.1) * (p.0 - u.0);
    let (d1, d2, d3) = (side(a, b), side(b, c), side(c, a));
    let neg = d1 < 0.0 || d2 < 0.0 || d3 < 0.0;
    let pos = d1 > 0.0 || d2 > 0.0 || d3 > 0.0;
    !(neg && pos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bento_core::agent_proto::Activity;

    fn pixel(p: &Pixmap, x: u32, y: u32) -> [u8; 4] {
        let i = ((y * p.size + x) * 4) as usize;
        p.argb[i..i + 4].try_into().unwrap()
    }

    #[test]
    fn every_state_draws_a_disc_with_a_sign() {
        for c in [
            Condition::UpToDate,
            Condition::Busy(Activity::Checking),
            Condition::RebootPending,
            Condition::Failed,
            Condition::RolledBack,
            Condition::Unreachable,
        ] {
            let p = draw(c, 32);
            assert_eq!(p.argb.len(), 32 * 32 * 4);
            assert_eq!(pixel(&p, 0, 0)[0], 0, "corners are transparent");
            let (disc, _, ink) = look(c);
            // Somewhere inside the disc there is its colour and the sign's colour.
            let has = |rgb: Rgb| {
                (0..32).any(|y| (0..32).any(|x| pixel(&p, x, y) == [255, rgb[0], rgb[1], rgb[2]]))
            };
            assert!(has(disc) && has(ink), "{c:?}");
        }
        assert_eq!(pixmaps(Condition::Failed).len(), SIZES.len());
    }
}
