#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// PyTorch's `.ckpt`/`.pt`/`.bin` files are pickles: loading one runs whatever code it names, so
/// diffedit loads none — checkpoints (SingleFileCheckpoint) and textual-inversion embeddings
/// (TextualInversionEmbedding) alike — and says how to convert it once to safetensors.
public enum PickleFile {
    /// Extensions of PyTorch pickle files.
    static let extensions: Set<String> = ["ckpt", "pt", "pth", "bin", "pkl", "pickle"]

    /// Whether `path` is a pickle: by its extension, or by its first bytes (torch.save's zip
    /// container, or a legacy pickle's protocol opcode), whatever its name.
    public static func isPickle(_ path: String) -> Bool {
        let ext = URL(fileURLWithPath: path).pathExtension.lowercased()
        var head: [UInt8] = []
        // Only a regular file is sniffed, opened without blocking (InputFile); anything else is
        // left for the reader (SafeTensorsFile) to refuse by name.
        if let fd = try? InputFile.open(path, what: "weights") {
            var buffer = [UInt8](repeating: 0, count: 4)
            let n = read(fd, &buffer, 4)
            close(fd)
            head = Array(buffer.prefix(max(n, 0)))
        }
        let zip = head.starts(with: [0x50, 0x4B, 0x03, 0x04])  // torch.save's zip container
        let pickle = head.count >= 2 && head[0] == 0x80 && (2...5).contains(head[1])  // legacy torch.save
        return extensions.contains(ext) || zip || pickle
    }
}
