<?php

declare(strict_types=1);

namespace Plasm\Exception;

/** gRPC status FAILED_PRECONDITION. */
class FailedPreconditionException extends RpcException
{
}
