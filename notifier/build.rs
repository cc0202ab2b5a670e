//! The dashboard's built front end (`dashboard/dist/`, made by
//! `scripts/build-dashboard.sh`) is embedded in the binary (see `src/serve/assets.rs`).
//! Without it the build stops here with a message that says what to run, rather than
//! later with rust-embed's "folder does not exist".

use std::path::Path;

fn main() {
    let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboard/dist");
    // A rebuilt dashboard (a new stamp) must rebuild the crate that embeds it.
    println!("cargo:rerun-if-changed=../dashboard/dist/.stamp");
    println!("cargo:rerun-if-changed=../dashboard/dist/index.html");
    for file in ["index.html", "app.js", "app.css"] {
        if !dist.join(file).is_file() {
            panic!(
                "\n\nThe dashboard is not built: {} is missing.\n\
                 Run scripts/build-dashboard.sh (it needs Node and npm; scripts/setup.sh \
                 installs them and runs it).\n\n",
                dist.join(file).display()
            );
        }
    }
}
