fn main() {
    println!("vduse-net");
}
