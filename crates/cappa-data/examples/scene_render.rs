//! Measures scene generation and rendering speed and optionally writes a few rendered scenes.
//!
//! Run with `cargo run --release -p cappa-data --example scene_render [OUT_DIR]`.

use std::time::Instant;

use cappa_data::scene::{SceneConfig, SceneWorld};

fn main() {
    let out_dir = std::env::args().nth(1);
    for size in [64u32, 224] {
        let config = SceneConfig {
            image_size: size,
            ..SceneConfig::default()
        };
        let world = SceneWorld::new(config, 0).expect("default config is valid");
        let scenes: Vec<_> = (0..2000).map(|i| world.scene(i)).collect();
        let start = Instant::now();
        let mut checksum = 0u64;
        for scene in &scenes {
            checksum += world.render(scene).as_raw()[0] as u64;
        }
        let render = start.elapsed().as_secs_f64() / scenes.len() as f64;
        let start = Instant::now();
        for i in 0..2000 {
            let scene = world.scene(i);
            checksum += world.captions(&scene, i).len() as u64;
        }
        let generate = start.elapsed().as_secs_f64() / 2000.0;
        println!(
            "{size}x{size}: render {:.1} us/scene, scene graph + captions {:.1} us (checksum {checksum})",
            render * 1e6,
            generate * 1e6
        );
        if let Some(dir) = &out_dir {
            std::fs::create_dir_all(dir).expect("output directory can be created");
            for i in 0..8 {
                let scene = world.scene(i);
                let path = format!("{dir}/scene_{size}_{i}.png");
                world
                    .render(&scene)
                    .save(&path)
                    .expect("PNG can be written");
                println!("{path}: {}", world.captions(&scene, i)[0]);
            }
        }
    }
}
