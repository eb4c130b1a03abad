fn main() {
    // refinery embeds the SQL files at compile time; a new file must trigger a rebuild.
    println!("cargo:rerun-if-changed=../migrations");
}
