#if canImport(Glibc)
import Glibc
#endif

/// libFuzzer entry: the bytes are written to a file and opened as safetensors; it must either
/// load (and every entry convert) or throw ToolError.
@_cdecl("LLVMFuzzerTestOneInput")
public func safeTensorsFuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let path = "/tmp/diffedit-fuzz-safetensors-\(getpid()).safetensors"
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    guard fd >= 0 else { fatalError("open \(path)") }
    var done = 0
    while done < size {
        let n = write(fd, data + done, size - done)
        if n <= 0 { fatalError("write") }
        done += n
    }
    close(fd)
    do {
        let file = try SafeTensorsFile(path: path)
        for name in file.names {
            consume(try? file.floats(file.entries[name]!))
        }
    } catch is ToolError {
    } catch {
        fatalError("non-ToolError thrown: \(error)")
    }
    return 0
}
