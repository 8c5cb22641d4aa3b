<?php

declare(strict_types=1);

namespace Plasm\Exception;

/**
 * UNAVAILABLE: the node is not serving the call (shutting down, no worker for
 * the job) or cannot be reached (ConnectionException). The client retries
 * these where it is safe; see Client.
 */
class UnavailableException extends RpcException
{
}
