#if canImport(Glibc)
import Glibc
#endif

/// libFuzzer entry: any byte string must either parse as tensor records or throw ToolError.
@_cdecl("LLVMFuzzerTestOneInput")
public func tensorStreamFuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let reader = TensorStreamReader(pipeReader(UnsafeRawBufferPointer(start: data, count: size)))
    do {
        while let r = try reader.next() {
            // Touch what the tools touch: conversions and integer views.
            consume(r.floats().count)
            consume(try? r.int32s())
            consume(TensorStream.encode(r).count)
        }
    } catch is ToolError {
    } catch {
        fatalError("non-ToolError thrown: \(error)")
    }
    return 0
}
