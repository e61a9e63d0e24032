//! `powerloss <backing-dir> <mount-point>`: mounts the power-loss file system until interrupted
//! (`fusermount3 -u <mount-point>`). Control it through `<mount-point>/.powerloss`:
//! `echo cut > .powerloss` drops unsynced data, `echo torn 42 > .powerloss` tears it,
//! `echo on > .powerloss` restores power, `echo clear-cache > .powerloss` drops unsynced data and
//! leaves the power on (LazyFS's `clear-cache`: not a power cut, see `powerloss::Cut::ClearCache`), `cat .powerloss` shows the state. An optional third
//! argument picks the disk model: `strict_dirs`, `delalloc` or `strict_dirs,delalloc`.

use std::path::PathBuf;

fn main() -> std::process::ExitCode {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let (backing, mountpoint, model) = match args.as_slice() {
        [backing, mountpoint] => (backing, mountpoint, powerloss::Model::default()),
        [backing, mountpoint, model] => match powerloss::Model::parse(&model.to_string_lossy()) {
            Ok(model) => (backing, mountpoint, model),
            Err(e) => {
                eprintln!("powerloss: {e}");
                return std::process::ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("usage: powerloss <backing-dir> <mount-point> [strict_dirs,delalloc]");
            return std::process::ExitCode::from(2);
        }
    };
    let mount = match powerloss::Mount::with_model(backing, mountpoint, model) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("powerloss: cannot mount {}: {e}", mountpoint.display());
            return std::process::ExitCode::FAILURE;
        }
    };
    eprintln!("powerloss: {} mounted over {}", mountpoint.display(), backing.display());
    match mount.serve_until_unmounted() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("powerloss: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
