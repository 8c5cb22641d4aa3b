<?php

declare(strict_types=1);

namespace Plasm\Exception;

/** gRPC status UNKNOWN. */
class UnknownException extends RpcException
{
}
