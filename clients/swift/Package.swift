// swift-tools-version: 5.9
//
// The Swift client for a Plasm node (clients/swift/README.md).
//
// Protobuf messages and the gRPC client are generated at build time from the
// repository's proto/plasm/v1/*.proto by two SwiftPM build-tool plugins, so no
// generated code is committed:
//
// * SwiftProtobufPlugin (swift-protobuf; Sources/protoc-gen-swift/Docs.docc/
//   spm-plugin.md) reads Sources/PlasmClient/swift-protobuf-config.json;
// * GRPCSwiftPlugin (grpc-swift 1.x; Sources/protoc-gen-grpc-swift/Docs.docc/
//   spm-plugin.md) reads Sources/PlasmClient/grpc-swift-config.json and
//   generates the async/await Plasm_V1_PlasmServiceAsyncClient.
//
// Both plugins run protoc with the config file's directory as the import path,
// so the protos sit in the target at the path their imports use
// (Sources/PlasmClient/plasm/v1/*.proto): byte-for-byte copies of proto/,
// kept in step by sync-protos.sh and checked in CI (tests/test_swift_sources.py).
//
// grpc-swift 1.x, not 2.x: gRPC Swift 2 needs swift-tools-version 6.0 and
// macOS 15, and its generator plugin lives in grpc-swift-protobuf; 1.x is the
// maintained line whose GRPCSwiftPlugin works with this 5.9 manifest.

import PackageDescription

let package = Package(
    name: "PlasmClient",
    platforms: [
        // The generated async clients are available from macOS 12 / iOS 15.
        .macOS(.v12),
        .iOS(.v15),
    ],
    products: [
        .library(name: "PlasmClient", targets: ["PlasmClient"]),
    ],
    dependencies: [
        .package(url: "https://github.com/grpc/grpc-swift.git", from: "1.24.2"),
        .package(url: "https://github.com/apple/swift-protobuf.git", from: "1.28.2"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "3.0.0"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.65.0"),
    ],
    targets: [
        .target(
            name: "PlasmClient",
            dependencies: [
                .product(name: "GRPC", package: "grpc-swift"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            plugins: [
                .plugin(name: "SwiftProtobufPlugin", package: "swift-protobuf"),
                .plugin(name: "GRPCSwiftPlugin", package: "grpc-swift"),
            ]
        ),
        .testTarget(
            name: "PlasmClientTests",
            dependencies: [
                "PlasmClient",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ]
        ),
    ]
)
