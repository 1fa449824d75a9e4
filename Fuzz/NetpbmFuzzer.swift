#if canImport(Glibc)
import Glibc
#endif

/// libFuzzer entry: any bytes must read as netpbm images or throw ToolError (libnetpbm's own
/// errors are caught by the C shim and returned as messages).
@_cdecl("LLVMFuzzerTestOneInput")
public func netpbmFuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    NetpbmImage.maxSamples = 1 << 22  // keep hostile headers from eating the fuzzer's memory
    do {
        let images = try NetpbmImage.readAll(pipeReader(UnsafeRawBufferPointer(start: data, count: size)))
        for im in images { consume(im.rgbTensor().data.count) }
    } catch is ToolError {
    } catch {
        fatalError("non-ToolError thrown: \(error)")
    }
    return 0
}
