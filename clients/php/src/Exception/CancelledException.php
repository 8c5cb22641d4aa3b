<?php

declare(strict_types=1);

namespace Plasm\Exception;

/** gRPC status CANCELLED. */
class CancelledException extends RpcException
{
}
