/// The toolchain's version, as `--version` prints it.
public enum DiffEditVersion {
    public static let string = "0.7.0"
}
