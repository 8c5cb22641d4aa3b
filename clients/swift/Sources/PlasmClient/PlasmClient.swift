// A small async/await client for a Plasm node's gRPC API (plasm.v1.PlasmService).
//
// The Plasm_V1_* messages and Plasm_V1_PlasmServiceAsyncClient are generated
// at build time from proto/plasm/v1 by the swift-protobuf and grpc-swift 1.x
// build plugins (Package.swift). Only this thin wrapper is written by hand:
// one channel, a deadline on every call, and the request shapes Plasm expects.
//
// Failed calls throw grpc-swift's GRPCStatus (status.code is, for example,
// .unavailable when no node listens, .deadlineExceeded when a deadline passes).

import Foundation
import GRPC
import NIOCore
import NIOPosix

public final class PlasmClient {
    /// Where plasmd serves gRPC by default: loopback only, plaintext HTTP/2.
    public static let defaultHost = "127.0.0.1"
    public static let defaultPort = 50151

    /// Deadline of Verify, GetNodeInfo and GetReceipt.
    public let callTimeout: TimeAmount
    /// Deadline of Submit, which answers once the job has run.
    public let submitTimeout: TimeAmount

    private let channel: GRPCChannel
    private let service: Plasm_V1_PlasmServiceAsyncClient

    /// Connect to a node. The connection is made lazily, on the first call.
    ///
    /// - target: `.host("127.0.0.1", port: 50151)` by default; a node run as a
    ///   service also listens on a Unix socket: `.unixDomainSocket(path)`.
    public init(
        target: ConnectionTarget = .host(PlasmClient.defaultHost, port: PlasmClient.defaultPort),
        callTimeout: TimeAmount = .seconds(10),
        submitTimeout: TimeAmount = .seconds(120)
    ) throws {
        let channel = try GRPCChannelPool.with(
            target: target,
            transportSecurity: .plaintext,
            eventLoopGroup: MultiThreadedEventLoopGroup.singleton
        )
        self.channel = channel
        self.service = Plasm_V1_PlasmServiceAsyncClient(channel: channel)
        self.callTimeout = callTimeout
        self.submitTimeout = submitTimeout
    }

    /// Close the connection. Calls made afterwards fail.
    public func close() async throws {
        try await channel.close().get()
    }

    /// Run a job on the node and return its output and signed receipt.
    public func submit(
        _ request: Plasm_V1_SubmitRequest,
        timeout: TimeAmount? = nil
    ) async throws -> Plasm_V1_SubmitResponse {
        return try await service.submit(request, callOptions: options(timeout ?? submitTimeout))
    }

    /// Run `module` with these args, env and stdin. `args` should include
    /// argv[0] if the guest expects one; the receipt's input hash covers
    /// exactly what is sent here (ReceiptInput(manifest:) rebuilds it).
    public func submit(
        module: Data,
        args: [String] = [],
        env: [(name: String, value: String)] = [],
        stdin: Data = Data(),
        timeout: TimeAmount? = nil
    ) async throws -> Plasm_V1_SubmitResponse {
        var request = Plasm_V1_SubmitRequest()
        request.module = module
        request.manifest = PlasmClient.manifest(module: module, args: args, env: env, stdin: stdin)
        return try await submit(request, timeout: timeout)
    }

    /// Ask the node to check a receipt (signature, signer, and the hashes of
    /// whatever is passed). To check one without trusting any node, use
    /// ReceiptVerifier.verify instead.
    public func verify(
        receipt: Plasm_V1_SignedEnvelope,
        expectedExecutorNodeID: String? = nil,
        stdout: Data? = nil,
        stderr: Data? = nil,
        module: Data? = nil,
        input: Plasm_V1_JobManifest? = nil,
        timeout: TimeAmount? = nil
    ) async throws -> Plasm_V1_VerifyResponse {
        var request = Plasm_V1_VerifyRequest()
        request.receipt = receipt
        if let expected = expectedExecutorNodeID {
            request.expectedExecutorNodeID = expected
        }
        if let stdout = stdout {
            request.stdout = stdout
        }
        if let stderr = stderr {
            request.stderr = stderr
        }
        if let module = module {
            request.module = module
        }
        if let input = input {
            request.input = input
        }
        return try await service.verify(request, callOptions: options(timeout ?? callTimeout))
    }

    /// The node's identity, capabilities and state.
    public func nodeInfo(timeout: TimeAmount? = nil) async throws -> Plasm_V1_GetNodeInfoResponse {
        let request = Plasm_V1_GetNodeInfoRequest()
        return try await service.getNodeInfo(request, callOptions: options(timeout ?? callTimeout))
    }

    /// A receipt the node stored, by job id (32 lowercase hex).
    public func getReceipt(jobID: String, timeout: TimeAmount? = nil) async throws -> Plasm_V1_StoredReceipt {
        var request = Plasm_V1_GetReceiptRequest()
        request.jobID = jobID
        let response = try await service.getReceipt(request, callOptions: options(timeout ?? callTimeout))
        return response.receipt
    }

    /// The manifest for a job; module_sha256 is set so the node can refuse
    /// module bytes that do not match it.
    public static func manifest(
        module: Data,
        args: [String],
        env: [(name: String, value: String)],
        stdin: Data
    ) -> Plasm_V1_JobManifest {
        var manifest = Plasm_V1_JobManifest()
        manifest.moduleSha256 = ReceiptVerifier.sha256Hex(module)
        manifest.args = args
        manifest.env = env.map { variable in
            var envVar = Plasm_V1_EnvVar()
            envVar.name = variable.name
            envVar.value = variable.value
            return envVar
        }
        manifest.stdin = stdin
        return manifest
    }

    private func options(_ timeout: TimeAmount) -> CallOptions {
        return CallOptions(timeLimit: .timeout(timeout))
    }
}
